"""The settle call of one batch: balances netted per (user, asset), order records, the
event batch, and the market data the settle script writes and publishes after it.

Invariants:
- A batch's settle call covers exactly its commands with seq >= first_seq (those settled
  before a restart are left out) and names every key it writes.
- Until its call has run, the core is ahead of the ledger by exactly that batch
  (`PendingSettle`); nothing that needs a settled state (snapshot, state hash, ticker,
  position marker) runs in between.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from cryptex_common.ledger import BalanceChange, MarketDataWrite, OrderWrite, ScriptCall, settle_call
from cryptex_engine.decode import Decoded
from cryptex_engine.domain.commands import CommandResult
from cryptex_engine.translate import TERMINAL, BatchOutput

if TYPE_CHECKING:
    from cryptex_engine.service import EngineService


@dataclass(slots=True)
class PendingSettle:
    """A matched batch whose settle call has not run yet (the core is ahead of the ledger
    by exactly this batch until it does)."""

    call: ScriptCall
    out: BatchOutput
    decoded: list[Decoded]
    results: list[CommandResult]
    first_seq: int
    last_seq: int
    notify: list[str]
    started: float



def net_balances(results: list[CommandResult], first_seq: int) -> list[BalanceChange]:
    """The batch's balance deltas netted per (user, asset), in first-touch order."""
    net: dict[tuple[str, str], list[int]] = {}
    for r in results:
        if r.seq >= first_seq:
            for d in r.balance_deltas:
                entry = net.get((d.user_id, d.asset))
                if entry is None:
                    net[(d.user_id, d.asset)] = [d.available, d.locked]
                else:
                    entry[0] += d.available
                    entry[1] += d.locked
    return [BalanceChange(u, a, av, lk) for (u, a), (av, lk) in net.items() if av or lk]



def prepare_settle(svc: EngineService, out: BatchOutput, decoded: list[Decoded], results: list[CommandResult],
                 first_seq: int, last_seq: int) -> PendingSettle:
    """The one script call that settles the batch and then writes and publishes its
    market data (and private updates for users already known to be subscribed)."""
    dumps, md = orjson.dumps, svc.market_data
    orders = [OrderWrite(rec["orderId"], rec["userId"], dumps(rec), rec["status"] in TERMINAL)
              for rec in out.orders.values()]
    ts_ms = decoded[-1].ts_ms
    notify = md.touched_users(out, results, first_seq) if svc.settings.publish_user_updates else []
    data: MarketDataWrite = md.build(svc.core, out, results, first_seq, last_seq, ts_ms)
    if notify and md.subscribers:
        data.user_messages.extend(md.user_messages(out, results, first_seq, md.subscribers))
    call = settle_call(
        symbol=svc.symbol, epoch=svc.lease.epoch, first_seq=first_seq, last_seq=last_seq,
        batch_json=dumps(svc.translator.batch(out, first_seq, last_seq, ts_ms)),
        balances=net_balances(results, first_seq), orders=orders, notify_users=notify,
        now_ms=int(time.time() * 1000), market_data=data,
    )
    return PendingSettle(call, out, decoded, results, first_seq, last_seq, notify, time.perf_counter())


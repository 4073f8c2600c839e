"""The settle calls of one batch: step A (the event batch, the journal and the market data,
in the market's slot) and one call per touched ledger bucket (balances netted per (user,
asset), order records, private updates), then the replies (cryptex_common.settle_calls).

Invariants:
- A batch's settle calls cover exactly its commands with seq >= first_seq (those settled
  before a restart are left out) and name every key they write.
- Replies are published only after every bucket call of the batch was applied.
- Until its call has run, the core is ahead of the ledger by exactly that batch
  (`PendingSettle`); nothing that needs a settled state (snapshot, state hash, ticker,
  position marker) runs in between.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from cryptex_common.settle_calls import BalanceChange, MarketDataWrite, OrderWrite, Payload, SettlePlan, settle_plan
from cryptex_engine.decode import Decoded
from cryptex_engine.domain.commands import CommandResult
from cryptex_engine.translate import TERMINAL, BatchOutput

if TYPE_CHECKING:
    from cryptex_engine.service import EngineService


@dataclass(slots=True)
class PendingSettle:
    """A matched batch whose settle call has not run yet (the core is ahead of the ledger
    by exactly this batch until it does)."""

    plan: SettlePlan
    replies: list[tuple[str, Payload]]
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
                   first_seq: int, last_seq: int, journal_ack: str = "",
                   outbox_acks: list[tuple[str, str]] | None = None) -> PendingSettle:
    """The settle calls of the batch, its market data (and private updates for users
    already known to be subscribed) and its replies."""
    dumps, md = orjson.dumps, svc.market_data
    orders = [OrderWrite(rec["orderId"], rec["userId"], dumps(rec), rec["status"] in TERMINAL)
              for rec in out.orders.values()]
    ts_ms = decoded[-1].ts_ms
    notify = md.touched_users(out, results, first_seq) if svc.settings.publish_user_updates else []
    data: MarketDataWrite = md.build(svc.core, out, results, first_seq, last_seq, ts_ms)
    messages = md.user_messages(out, results, first_seq, md.subscribers) if notify and md.subscribers else None
    plan = settle_plan(
        symbol=svc.symbol, epoch=svc.lease.epoch, first_seq=first_seq, last_seq=last_seq,
        batch_json=dumps(svc.translator.batch(out, first_seq, last_seq, ts_ms)),
        balances=net_balances(results, first_seq), orders=orders, notify_users=notify,
        now_ms=int(time.time() * 1000), market_data=data, journal_ack=journal_ack, user_messages=messages,
        outbox_acks=outbox_acks or [],
    )
    return PendingSettle(plan, md.replies(out), out, decoded, results, first_seq, last_seq, notify,
                         time.perf_counter())


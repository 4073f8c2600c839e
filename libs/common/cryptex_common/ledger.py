"""The ledger in Redis: balances, locks, order queueing and batch settlement via Lua.

Invariant, for every asset at every moment (checked by tests and `conservation_report`):
    sum over users (available + locked) + fee account + money in flight
        = deposits - withdrawals
where money in flight is the balance deltas of journaled settle parts not yet applied in
their bucket (cryptex_common.settle_calls). Every order on a command stream had its funds
locked by R1 (enqueue_order.lua) before its hand-over (handover.lua) queued it, at most
once. A batch is settled at most once (by sequence) and only by the engine holding the
epoch (docs/decisions/0013-redis-cluster-sharded-ledger.md).

Every amount in Redis (balance fields, the fee account, the buckets' totals) is a canonical
decimal-integer string, changed only by the scripts here with exact string arithmetic
(lua/lib_decimal.lua, prepended to each): no amount has an int64 limit. Each script checks
everything before its first write, so a script that refuses or fails wrote nothing and a
retry is always safe (docs/decisions/0009-ledger-exact-arithmetic.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common.resp import as_text
from cryptex_common.settle_calls import (
    TERMINAL_ORDER_TTL_S,
    BalanceChange,
    MarketDataWrite,
    OrderWrite,
    Payload,
    ScriptCall,
    SettlePlan,
    bucket_deltas,
    settle_plan,
    unpack_call,
)

__all__ = ["TERMINAL_ORDER_TTL_S", "BalanceChange", "MarketDataWrite", "OrderWrite", "Payload", "ScriptCall",
           "SettlePlan", "settle_plan"]

LUA_DIR = Path(__file__).parent / "lua"
DECIMAL_PRELUDE = "lib_decimal.lua"
CLIENT_ORDER_ID_TTL_S = 24 * 3600
HANDED_TTL_S = 7 * 24 * 3600  # a hand-over is deduplicated for this long (reconcile.OUTBOX_MAX_AGE_MS)

# Fields of an outbox entry written by enqueue_order.lua; all but ENTRY_MARKET are the
# market command stream entry handover.lua writes. `id` and `c` are what the engine
# decodes; u/a/l are the lock envelope, so an engine that cannot decode `c` can still
# release the funds the entry locked.
ENTRY_ORDER_ID = "id"
ENTRY_USER = "u"
ENTRY_LOCK_ASSET = "a"
ENTRY_LOCK_UNITS = "l"
ENTRY_COMMAND = "c"
ENTRY_FIELDS = (ENTRY_ORDER_ID, ENTRY_USER, ENTRY_LOCK_ASSET, ENTRY_LOCK_UNITS, ENTRY_COMMAND)
ENTRY_MARKET = "m"
# On a command stream entry: the order's outbox entry id, which the bucket call settling
# the order deletes (in the user's slot), so the relay only ever sees stuck orders.
ENTRY_OUTBOX = "o"


def lua_source(name: str) -> str:
    """One script file as it is (lease.lua and snapshot_set.lua need no prelude)."""
    return (LUA_DIR / name).read_text()


def ledger_script_source(name: str) -> str:
    """A ledger script with the decimal prelude in front: one definition of the arithmetic."""
    return lua_source(DECIMAL_PRELUDE) + "\n" + lua_source(name)


class LedgerScriptError(RuntimeError):
    """A script refused malformed input ("invalid") or stored data it did not write
    ("corrupt"). Nothing was written. Callers passing Python ints never cause "invalid"."""

    def __init__(self, status: str, detail: tuple[str, ...]) -> None:
        super().__init__(f"ledger script refused: {status} {' '.join(detail)}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Enqueued:
    status: str  # "ok" | "replayed" | "dup" | "insufficient"
    order_id: int | None = None
    outbox_id: str | None = None


@dataclass(frozen=True, slots=True)
class SettleResult:
    status: str  # "ok" | "duplicate" | "gap" | "fenced" | "negative" | "applied"
    detail: tuple[str, ...] = ()
    # on "ok" of a bucket call: its users among those looked up with a live subscription
    subscribed: frozenset[str] = frozenset()


def _checked(reply: list[Any]) -> tuple[str, tuple[str, ...]]:
    """(status, detail) of a script reply; raises LedgerScriptError on invalid/corrupt."""
    status, detail = as_text(reply[0]), tuple(as_text(x) for x in reply[1:])
    if status in ("invalid", "corrupt"):
        raise LedgerScriptError(status, detail)
    return status, detail


def _units(value: int, name: str) -> str:
    """A positive int as the canonical decimal string the scripts expect."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return str(value)


_BALANCE_HINTS: dict[str, str] = {}


def _balance_hint(asset: str) -> str:
    """The user-channel message saying `asset`'s balance changed (one string per asset)."""
    hint = _BALANCE_HINTS.get(asset)
    if hint is None:
        hint = orjson.dumps({"type": "balance", "data": {"assets": [asset]}}).decode()
        if len(_BALANCE_HINTS) < 1024:
            _BALANCE_HINTS[asset] = hint
    return hint


def enqueue_call(
    *, symbol: str, user_id: str, lock_asset: str, lock_units: int, command_json: str | bytes,
    record_tail_json: str | bytes, client_order_id: str | None, signature: str | None = None,
    replay_guard_ms: int = 0,
) -> ScriptCall:
    """enqueue_order.lua's call (R1); see Ledger.enqueue_order."""
    units = _units(lock_units, "lock_units")
    tag, bucket = keys.user_tag(user_id), keys.user_bucket(user_id)
    coid_key = keys.client_order_key(user_id, client_order_id) if client_order_id else keys.unused_key(tag)
    if signature is not None:
        guard_key, guard_ms = keys.signature_key(user_id, signature), _units(replay_guard_ms, "replay_guard_ms")
    else:
        guard_key, guard_ms = keys.unused_key(tag), "0"
    return ScriptCall(
        keys=[keys.balance_key(user_id), keys.outbox_stream(tag), keys.order_id_counter(bucket),
              keys.open_orders_key(user_id), coid_key, guard_key],
        args=[keys.available_field(lock_asset), keys.locked_field(lock_asset), units, command_json,
              "1" if client_order_id else "0", CLIENT_ORDER_ID_TTL_S, symbol, user_id,
              record_tail_json, keys.user_channel(user_id), _balance_hint(lock_asset), lock_asset,
              *ENTRY_FIELDS, guard_ms, keys.order_key_prefix(bucket), bucket, keys.USER_BUCKETS, ENTRY_MARKET],
    )


def enqueued(reply: list[Any]) -> Enqueued:
    """enqueue_order.lua's reply as an Enqueued (for callers that run the script's call
    themselves); raises LedgerScriptError on invalid/corrupt."""
    status, detail = _checked(reply)
    if status == "ok":
        return Enqueued("ok", int(detail[0]), detail[1])
    if status == "dup":
        return Enqueued("dup", int(detail[0]))
    return Enqueued(status)


def handover_call(*, symbol: str, order_id: int | str, user_id: str, lock_asset: str, lock_units: int | str,
                  command_json: Payload, outbox_id: str) -> ScriptCall:
    """handover.lua's call: the order's command stream entry (ENTRY_FIELDS and its outbox
    entry id), at most once."""
    return ScriptCall(
        keys=[keys.commands_stream(symbol), keys.handed_key(symbol, order_id)],
        args=[HANDED_TTL_S, ENTRY_ORDER_ID, order_id, ENTRY_USER, user_id, ENTRY_LOCK_ASSET, lock_asset,
              ENTRY_LOCK_UNITS, lock_units, ENTRY_COMMAND, command_json, ENTRY_OUTBOX, outbox_id],
    )


def outbox_handover_call(entry_id: str, fields: dict[str, Payload]) -> ScriptCall:
    """The hand-over of an outbox entry (its fields as enqueue_order.lua wrote them)."""
    def text(name: str) -> str:
        return as_text(fields[name])

    return handover_call(symbol=text(ENTRY_MARKET), order_id=text(ENTRY_ORDER_ID), user_id=text(ENTRY_USER),
                         lock_asset=text(ENTRY_LOCK_ASSET), lock_units=text(ENTRY_LOCK_UNITS),
                         command_json=fields[ENTRY_COMMAND], outbox_id=entry_id)


def handed(reply: list[Any]) -> tuple[str, str]:
    """handover.lua's reply: ("ok" | "dup", the order's command stream id)."""
    status, detail = _checked(reply)
    return status, detail[0]


def settle_result(reply: list[Any]) -> SettleResult:
    """The SettleResult of a settle_market.lua or settle_bucket.lua reply; raises
    LedgerScriptError on invalid/corrupt (nothing was written)."""
    status, detail = _checked(reply)
    if status == "ok":
        return SettleResult("ok", subscribed=frozenset(detail))
    return SettleResult(status, detail)


def move_call(
    *, kind: str, user_id: str, asset: str, units: int, tx_id: str, record: dict[str, Any]
) -> ScriptCall:
    """move_funds.lua's call; see Ledger.move_funds. Once written, the move is published on
    the user's channel as a balance hint that carries the transfer (`delta` in smallest
    units, negative for a withdrawal): gateways refresh the balance and the Binance facade
    sends `balanceUpdate`."""
    if kind not in ("deposit", "withdraw"):
        raise ValueError("kind must be deposit or withdraw")
    amount = _units(units, "units")
    totals_field = f"{asset}:{'deposits' if kind == 'deposit' else 'withdrawals'}"
    hint = {"type": "balance", "data": {"assets": [asset], "transfer": {
        "asset": asset, "delta": amount if kind == "deposit" else f"-{amount}", "txId": tx_id}}}
    return ScriptCall(
        keys=[keys.tx_key(user_id, tx_id), keys.balance_key(user_id), keys.totals_key(keys.user_tag(user_id))],
        args=[kind, keys.available_field(asset), amount, totals_field, orjson.dumps(record).decode(),
              keys.user_channel(user_id), orjson.dumps(hint).decode()],
    )


class Ledger:
    """The ledger scripts over redis-py (a single Redis or a RedisCluster client): tests,
    tools and the services' slow paths. The order path and the engine's hot loop send the
    same calls over a pipelined connection (cryptex_common.resp / resp_cluster)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(ledger_script_source("enqueue_order.lua"))
        self._handover = redis.register_script(ledger_script_source("handover.lua"))
        self._settle_market = redis.register_script(ledger_script_source("settle_market.lua"))
        self._settle_bucket = redis.register_script(ledger_script_source("settle_bucket.lua"))
        self._move = redis.register_script(ledger_script_source("move_funds.lua"))

    async def enqueue_order(self, **call: Any) -> Enqueued:
        """R1: lock `lock_units` of `lock_asset`, record the order and put it in the user's
        bucket outbox, or change nothing (`enqueue_call`'s arguments).

        With a `signature`, the request's replay guard is checked and set in the same call:
        status "replayed" (nothing written) when it exists; on "ok" it is set for
        `replay_guard_ms`. On any other status the guard is not set: the caller sets it
        (auth.TIMESTAMP_WINDOW_MS rules). Status "ok" | "replayed" | "dup" |
        "insufficient"; raises LedgerScriptError on corrupt data. The order reaches its
        market only with `hand_over` (or the reconciler's)."""
        script = enqueue_call(**call)
        return enqueued(await self._enqueue(keys=script.keys, args=script.args))

    async def hand_over(self, call: ScriptCall) -> tuple[str, str]:
        """Run a `handover_call`: ("ok" | "dup", the order's command stream id)."""
        return handed(await self._handover(keys=call.keys, args=call.args))

    async def place(self, **call: Any) -> Enqueued:
        """R1, then the hand-over of what it locked (what the API does for an order)."""
        enq = await self.enqueue_order(**call)
        if enq.status == "ok" and enq.order_id is not None and enq.outbox_id is not None:
            await self.hand_over(handover_call(
                symbol=call["symbol"], order_id=enq.order_id, user_id=call["user_id"], lock_asset=call["lock_asset"],
                lock_units=call["lock_units"], command_json=call["command_json"], outbox_id=enq.outbox_id))
        return enq

    async def settle(self, **plan: Any) -> SettleResult:
        """Both steps of one batch (`settle_plan`'s arguments): step A, then, only when it
        answered "ok", every bucket call. The answer is step A's, with the buckets'
        subscribed users; a bucket refusing ("negative") raises BucketRefused.
        ("duplicate": the batch was recorded before; its journal entry, not this plan,
        is what may still need applying: bucket calls of other batch boundaries could
        apply a part twice.)"""
        return await self.run_plan(settle_plan(**plan))

    async def run_plan(self, plan: SettlePlan) -> SettleResult:
        res = await self.run_market(plan.market)
        if res.status != "ok":
            return res
        subscribed: set[str] = set()
        for _tag, call in plan.buckets:
            subscribed |= await self.apply_bucket(call)
        return SettleResult(res.status, res.detail, frozenset(subscribed))

    async def run_market(self, call: ScriptCall) -> SettleResult:
        """Run step A (settle_market.lua), loading the script when Redis does not know it."""
        return settle_result(await self._settle_market(keys=call.keys, args=call.args))

    async def apply_bucket(self, call: ScriptCall) -> frozenset[str]:
        """Run one bucket call (settle_bucket.lua): its subscribed users ("ok") or none
        ("applied": it was before). Raises BucketRefused on "negative"."""
        res = settle_result(await self._settle_bucket(keys=call.keys, args=call.args))
        if res.status not in ("ok", "applied"):
            raise BucketRefused(res.status, res.detail)
        return res.subscribed

    @property
    def settle_market_sha(self) -> str:
        return str(self._settle_market.sha)

    @property
    def settle_bucket_sha(self) -> str:
        return str(self._settle_bucket.sha)

    async def move_funds(
        self, *, kind: str, user_id: str, asset: str, units: int, tx_id: str, record: dict[str, Any]
    ) -> tuple[str, dict[str, Any] | None]:
        """Deposit or withdraw once per (user, txId): all writes or none, so a retry is
        always safe. Returns ("ok" | "dup" | "insufficient", stored record on "dup");
        raises LedgerScriptError on corrupt stored data. No amount or total has a size limit."""
        call = move_call(kind=kind, user_id=user_id, asset=asset, units=units, tx_id=tx_id,
                         record=record)
        status, detail = _checked(await self._move(keys=call.keys, args=call.args))
        stored = orjson.loads(detail[0]) if status == "dup" else None
        return status, stored

    async def balances(self, user_id: str) -> dict[str, dict[str, int]]:
        """{asset: {"available": n, "locked": n}} in smallest units."""
        raw = await self.redis.hgetall(keys.balance_key(user_id))
        out: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            asset, kind = as_text(field).rsplit(":", 1)
            out.setdefault(asset, {"available": 0, "locked": 0})[kind] = int(as_text(value))
        return out

    async def conservation_report(self) -> dict[str, dict[str, int]]:
        """Per asset: held (all balances incl. fees), in flight (journaled bucket parts not
        yet applied), deposits, withdrawals. Conserved when held + inFlight == deposits -
        withdrawals. Scans every balance hash (every primary of a cluster)."""
        report: dict[str, dict[str, int]] = {}

        def row(asset: str) -> dict[str, int]:
            return report.setdefault(asset, {"held": 0, "inFlight": 0, "deposits": 0, "withdrawals": 0})

        async for key in self.redis.scan_iter(match=keys.balance_pattern(), count=1000):
            for field, value in (await self.redis.hgetall(key)).items():
                asset, _kind = as_text(field).rsplit(":", 1)
                row(asset)["held"] += int(as_text(value))
        for tag in keys.ledger_tags():
            for field, value in (await self.redis.hgetall(keys.totals_key(tag))).items():
                asset, kind = as_text(field).rsplit(":", 1)
                row(asset)[kind] += int(as_text(value))
        for _key, field, delta in await self.in_flight():
            row(as_text(field).rsplit(":", 1)[0])["inFlight"] += delta
        return report

    async def in_flight(self) -> list[tuple[str, str, int]]:
        """(balance key, field, delta) of every journaled bucket part not applied yet."""
        out: list[tuple[str, str, int]] = []
        async for journal in self.redis.scan_iter(match=keys.journal_pattern(), count=1000):
            market = keys.tag_of(as_text(journal))
            for entry_id, fields in await self.redis.xrange(journal):
                last_seq = int(as_text(entry_id).split("-")[0])
                for tag, blob in fields.items():
                    applied = await self.redis.hget(keys.applied_key(as_text(tag)), market)
                    if int(as_text(applied or b"0")) < last_seq:
                        out += bucket_deltas(unpack_call(blob))
        return out


class BucketRefused(RuntimeError):
    """A bucket call refused a journaled batch ("negative": a balance would go below zero).
    Nothing was written in that bucket; the journal keeps the batch for repair."""

    def __init__(self, status: str, detail: tuple[str, ...]) -> None:
        super().__init__(f"settle refused in a bucket: {status} {' '.join(detail)}")
        self.status = status
        self.detail = detail

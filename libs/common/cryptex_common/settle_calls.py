"""The two settle steps of one engine batch, as script calls (docs/decisions/0013).

A batch is settled in the market's slot first (step A, `settle_market.lua`: fenced by the
engine's epoch, idempotent by sequence, journaling the batch's ledger parts), then in each
touched ledger bucket (step B, `settle_bucket.lua`: idempotent by (market, last seq)).
Each step keeps to one hash slot, so both run on one Redis and on a Redis Cluster alike.

Invariants:
- a bucket call is only ever run after its step A answered "ok" or "duplicate", and a
  bucket's calls of one market run in sequence order (the engine waits for each batch's
  bucket calls; the journal replays in entry order), so "applied" means every earlier
  batch of that market is applied in that bucket too;
- the journal entry of a batch holds exactly its bucket calls (`pack_call`), so whoever
  replays it (the engine on recovery, the reconciler) applies the same writes;
- each bucket call's balance deltas of one asset sum, over all buckets of the batch, to
  zero (settlement moves money between a trade's parties and the fee account), so money
  in flight is exactly the deltas of bucket calls not yet applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import hiredis

from cryptex_common import keys
from cryptex_common.markets import market_tag
from cryptex_common.resp import as_text

TERMINAL_ORDER_TTL_S = 7 * 24 * 3600

Payload = str | bytes


class BalanceChange(NamedTuple):
    """An immutable record, built once per changed balance per batch."""

    user_id: str
    asset: str
    available_delta: int
    locked_delta: int


class OrderWrite(NamedTuple):
    order_id: int
    user_id: str
    record_json: str | bytes
    terminal: bool


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The KEYS and ARGV of one script call: every key the script touches is in `keys`
    (except `order:<id>` in enqueue_order.lua, whose id the script assigns)."""

    keys: list[str]
    args: list[Any]


@dataclass(frozen=True, slots=True)
class MarketDataWrite:
    """What step A writes and publishes after the batch's writes, in the same call, and
    only when the batch was recorded ("ok"): the REST depth book's changed levels (side
    "b"/"a", price ticks, "<price> <quantity>" or "" when gone; with `depth_replace` the
    stored book is dropped first and these are all its levels) and its header (None =
    leave it), public trades pushed on the recent-trades list (kept to `recent_keep`) and
    messages published in order. Private messages travel in the bucket calls."""

    symbol: str
    depth_header: Payload | None = None
    depth_levels: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    depth_replace: bool = False
    recent_keep: int = 1000
    trades: list[Payload] = dataclasses.field(default_factory=list)
    publishes: list[tuple[str, Payload]] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SettlePlan:
    """Step A's call, then (tag, call) per touched ledger bucket."""

    market: ScriptCall
    buckets: list[tuple[str, ScriptCall]]


def pack_call(call: ScriptCall) -> bytes:
    """A bucket call as one RESP array (numkeys, keys..., args...), as journaled."""
    packed: bytes = hiredis.pack_command((len(call.keys), *call.keys, *call.args))
    return packed


def unpack_call(blob: bytes | str) -> ScriptCall:
    """The inverse of `pack_call` (arguments come back as bytes)."""
    reader = hiredis.Reader()
    reader.feed(blob.encode() if isinstance(blob, str) else blob)
    parts = reader.gets()
    if not isinstance(parts, list) or not parts:
        raise ValueError("not a journaled settle call")
    n = int(parts[0])
    return ScriptCall([as_text(k) for k in parts[1:1 + n]], list(parts[1 + n:]))


def bucket_deltas(call: ScriptCall) -> list[tuple[str, str, int]]:
    """(balance key, field, delta) of a bucket call: the money it moves when applied."""
    n = int(call.args[4])
    return [(call.keys[3 + j], as_text(call.args[5 + 2 * j]), int(call.args[6 + 2 * j])) for j in range(n)]


def _net_changes(balances: list[BalanceChange]) -> dict[str, list[tuple[str, str, int]]]:
    """Per ledger tag: (balance key, field, summed delta) per touched field, zero sums left out."""
    net: dict[tuple[str, str, str], int] = {}
    for ch in balances:
        if ch.available_delta:
            k = (ch.user_id, keys.balance_key(ch.user_id), keys.available_field(ch.asset))
            net[k] = net.get(k, 0) + ch.available_delta
        if ch.locked_delta:
            k = (ch.user_id, keys.balance_key(ch.user_id), keys.locked_field(ch.asset))
            net[k] = net.get(k, 0) + ch.locked_delta
    out: dict[str, list[tuple[str, str, int]]] = {}
    for (user_id, key, field), delta in net.items():
        if delta:
            out.setdefault(keys.user_tag(user_id), []).append((key, field, delta))
    return out


class _Bucket:
    """One bucket call being built."""

    __slots__ = ("acks", "changes", "messages", "orders", "users")

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, int]] = []
        self.orders: list[OrderWrite] = []
        self.users: list[str] = []
        self.messages: list[tuple[str, str, list[Payload]]] = []
        self.acks: list[str] = []

    def call(self, tag: str, symbol: str, last_seq: int, now_ms: int) -> ScriptCall:
        script_keys = [keys.applied_key(tag), keys.subscribers_key(tag), keys.outbox_stream(tag)]
        args: list[Any] = [market_tag(symbol), str(last_seq), TERMINAL_ORDER_TTL_S, str(now_ms), len(self.changes)]
        for key, field, delta in self.changes:
            script_keys.append(key)
            args += [field, str(delta)]
        args.append(len(self.orders))
        for o in self.orders:
            script_keys += [keys.order_key(o.order_id), keys.open_orders_key(o.user_id)]
            args += [o.order_id, o.record_json, "1" if o.terminal else "0"]
        args += [len(self.users), *self.users, len(self.messages)]
        for user_id, channel, messages in self.messages:
            args += [user_id, channel, len(messages), *messages]
        args += [len(self.acks), *self.acks]
        return ScriptCall(script_keys, args)


def settle_plan(
    *, symbol: str, epoch: int, first_seq: int, last_seq: int, batch_json: str | bytes,
    balances: list[BalanceChange], orders: list[OrderWrite], notify_users: Collection[str] = (),
    now_ms: int = 0, market_data: MarketDataWrite | None = None, journal_ack: str = "",
    user_messages: list[tuple[str, str, list[Payload]]] | None = None,
    outbox_acks: Sequence[tuple[str, str]] = (),
) -> SettlePlan:
    """Step A's call and the bucket calls of one batch. `notify_users` are looked up in
    their bucket's subscribers (the answer names those subscribed); `user_messages`
    (user, channel, messages) are published by their bucket call when that user is
    subscribed. `journal_ack`: the previous batch's journal entry, to delete (it was
    applied in every bucket). `outbox_acks` (user, outbox entry id): the outbox entries of
    the orders whose place commands the batch settles, deleted by their bucket's call."""
    buckets: dict[str, _Bucket] = {}

    def bucket(tag: str) -> _Bucket:
        b = buckets.get(tag)
        if b is None:
            b = buckets[tag] = _Bucket()
        return b

    for tag, changes in _net_changes(balances).items():
        bucket(tag).changes = changes
    for o in orders:
        bucket(keys.user_tag(o.user_id)).orders.append(o)
    for user_id in dict.fromkeys(notify_users):
        bucket(keys.user_tag(user_id)).users.append(user_id)
    for message in user_messages or ():
        bucket(keys.user_tag(message[0])).messages.append(message)
    for user_id, outbox_id in outbox_acks:
        bucket(keys.user_tag(user_id)).acks.append(outbox_id)
    calls = [(tag, b.call(tag, symbol, last_seq, now_ms)) for tag, b in buckets.items()]
    script_keys = [keys.engine_epoch_key(symbol), keys.engine_lease_key(symbol), keys.settled_seq_key(symbol),
                   keys.events_stream(symbol), keys.journal_stream(symbol)]
    args: list[Any] = [str(epoch), str(first_seq), str(last_seq), batch_json, journal_ack, len(calls)]
    for tag, call in calls:
        args += [tag, pack_call(call)]
    if market_data is not None:
        _market_data_args(market_data, script_keys, args)
    return SettlePlan(ScriptCall(script_keys, args), calls)


def journal_entry_id(last_seq: int) -> str:
    """The journal entry id of the batch ending at `last_seq`."""
    return f"{last_seq}-1"


def _market_data_args(md: MarketDataWrite, script_keys: list[str], args: list[Any]) -> None:
    script_keys += [*keys.depth_keys(md.symbol), keys.recent_trades_key(md.symbol)]
    if md.recent_keep < 1:
        raise ValueError("recent_keep must be positive")
    args += [md.depth_header if md.depth_header is not None else "", "1" if md.depth_replace else "0",
             len(md.depth_levels)]
    for side, ticks, text in md.depth_levels:
        args += [side, ticks, text]
    args += [md.recent_keep, len(md.trades), *md.trades, len(md.publishes)]
    for channel, message in md.publishes:
        args += [channel, message]

"""The ledger in Redis: balances, locks, order queueing and batch settlement via Lua.

Invariant, for every asset at every moment (checked by tests and `conservation_report`):
    sum over users (available + locked) + fee account = deposits - withdrawals
Every order on a command stream had its funds locked by the same script call that queued it.
A batch is settled at most once (by sequence) and only by the engine holding the epoch.

Every amount in Redis (balance fields, the fee account, `ledger:totals`) is a canonical
decimal-integer string, changed only by the scripts here with exact string arithmetic
(lua/lib_decimal.lua, prepended to each): no amount has an int64 limit. Each script checks
everything before its first write, so a script that refuses or fails wrote nothing and a
retry is always safe (docs/decisions/0009-ledger-exact-arithmetic.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common.resp import as_text

LUA_DIR = Path(__file__).parent / "lua"
DECIMAL_PRELUDE = "lib_decimal.lua"
CLIENT_ORDER_ID_TTL_S = 24 * 3600
TERMINAL_ORDER_TTL_S = 7 * 24 * 3600

# Fields of a command stream entry written by enqueue_order.lua. `id` and `c` are what the
# engine decodes; u/a/l are the lock envelope, so an engine that cannot decode `c` can still
# release the funds the entry locked.
ENTRY_ORDER_ID = "id"
ENTRY_USER = "u"
ENTRY_LOCK_ASSET = "a"
ENTRY_LOCK_UNITS = "l"
ENTRY_COMMAND = "c"
ENTRY_FIELDS = (ENTRY_ORDER_ID, ENTRY_USER, ENTRY_LOCK_ASSET, ENTRY_LOCK_UNITS, ENTRY_COMMAND)


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
    stream_id: str | None = None


@dataclass(frozen=True, slots=True)
class SettleResult:
    status: str  # "ok" | "duplicate" | "gap" | "fenced" | "negative"
    detail: tuple[str, ...] = ()
    # on "ok": the users of `notify_users` with a private subscription live at `now_ms`
    subscribed: frozenset[str] = frozenset()


class BalanceChange(NamedTuple):
    """An immutable record, built once per changed balance per batch (a NamedTuple:
    cheaper to build than a frozen dataclass)."""

    user_id: str
    asset: str
    available_delta: int
    locked_delta: int


class OrderWrite(NamedTuple):
    order_id: int
    user_id: str
    record_json: str | bytes
    terminal: bool


Payload = str | bytes


@dataclass(frozen=True, slots=True)
class MarketDataWrite:
    """What the settle script writes and publishes after the batch's settle writes, in the
    same call, and only when the batch was applied ("ok"): the REST depth book's changed
    levels (side "b"/"a", price ticks, "<price> <quantity>" or "" when gone; with
    `depth_replace` the stored book is dropped first and these are all its levels) and its
    header (None = leave it), public trades pushed on the recent-trades list (kept to
    `recent_keep`), messages published in order, then per user (user id, channel,
    messages) published only when that user's private subscription is live at `now_ms`."""

    symbol: str
    depth_header: Payload | None = None
    depth_levels: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    depth_replace: bool = False
    recent_keep: int = 1000
    trades: list[Payload] = dataclasses.field(default_factory=list)
    publishes: list[tuple[str, Payload]] = dataclasses.field(default_factory=list)
    user_messages: list[tuple[str, str, list[Payload]]] = dataclasses.field(default_factory=list)


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


def _net_changes(balances: list[BalanceChange]) -> list[tuple[str, str, int]]:
    """(balance key, field, summed delta) per touched field, zero sums left out."""
    net: dict[tuple[str, str], int] = {}
    for ch in balances:
        if ch.available_delta:
            k = (keys.balance_key(ch.user_id), keys.available_field(ch.asset))
            net[k] = net.get(k, 0) + ch.available_delta
        if ch.locked_delta:
            k = (keys.balance_key(ch.user_id), keys.locked_field(ch.asset))
            net[k] = net.get(k, 0) + ch.locked_delta
    return [(k, f, d) for (k, f), d in net.items() if d]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The KEYS and ARGV of one script call: every key the script touches is in `keys`
    (except `order:<id>` in enqueue_order.lua, whose id the script assigns)."""

    keys: list[str]
    args: list[Any]


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
    """enqueue_order.lua's call; see Ledger.enqueue_order."""
    units = _units(lock_units, "lock_units")
    coid_key = keys.client_order_key(user_id, client_order_id) if client_order_id else "-"
    if signature is not None:
        guard_key, guard_ms = keys.signature_key(signature), _units(replay_guard_ms, "replay_guard_ms")
    else:
        guard_key, guard_ms = "-", "0"
    return ScriptCall(
        keys=[keys.balance_key(user_id), keys.commands_stream(symbol), keys.ORDER_ID_COUNTER,
              keys.open_orders_key(user_id), coid_key, guard_key],
        args=[keys.available_field(lock_asset), keys.locked_field(lock_asset), units, command_json,
              "1" if client_order_id else "0", CLIENT_ORDER_ID_TTL_S, symbol, user_id,
              record_tail_json, keys.user_channel(user_id), _balance_hint(lock_asset), lock_asset,
              *ENTRY_FIELDS, guard_ms, keys.order_key("")],
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


def settle_call(
    *, symbol: str, epoch: int, first_seq: int, last_seq: int, batch_json: str | bytes,
    balances: list[BalanceChange], orders: list[OrderWrite], notify_users: Collection[str] = (),
    now_ms: int = 0, market_data: MarketDataWrite | None = None,
) -> ScriptCall:
    """settle_batch.lua's call: one KEYS entry per changed balance field, two per order,
    then (with `market_data`) the depth book's four keys and the recent-trades key."""
    changes = _net_changes(balances)
    users = list(dict.fromkeys(notify_users))
    script_keys = [keys.engine_epoch_key(symbol), keys.engine_lease_key(symbol),
                   keys.settled_seq_key(symbol), keys.events_stream(symbol), keys.PRIVATE_SUBSCRIBERS]
    args: list[Any] = [str(epoch), str(first_seq), str(last_seq), batch_json,
                       TERMINAL_ORDER_TTL_S, str(now_ms), len(changes)]
    for key, field, delta in changes:
        script_keys.append(key)
        args += [field, str(delta)]
    args.append(len(orders))
    for o in orders:
        script_keys += [keys.order_key(o.order_id), keys.open_orders_key(o.user_id)]
        args += [o.order_id, o.record_json, "1" if o.terminal else "0"]
    args += [len(users), *users]
    if market_data is not None:
        _market_data_args(market_data, script_keys, args)
    return ScriptCall(script_keys, args)


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
    args.append(len(md.user_messages))
    for user_id, channel, messages in md.user_messages:
        args += [user_id, channel, len(messages), *messages]


def settle_result(reply: list[Any]) -> SettleResult:
    """The SettleResult of a settle_batch.lua reply; raises LedgerScriptError on
    invalid/corrupt (nothing was written)."""
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
        keys=[keys.tx_key(tx_id), keys.balance_key(user_id), keys.LEDGER_TOTALS],
        args=[kind, keys.available_field(asset), amount, totals_field, orjson.dumps(record).decode(),
              keys.user_channel(user_id), orjson.dumps(hint).decode()],
    )


class Ledger:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(ledger_script_source("enqueue_order.lua"))
        self._settle = redis.register_script(ledger_script_source("settle_batch.lua"))
        self._move = redis.register_script(ledger_script_source("move_funds.lua"))

    async def enqueue_order(
        self,
        *,
        symbol: str,
        user_id: str,
        lock_asset: str,
        lock_units: int,
        command_json: str | bytes,
        record_tail_json: str | bytes,
        client_order_id: str | None,
        signature: str | None = None,
        replay_guard_ms: int = 0,
    ) -> Enqueued:
        """Lock `lock_units` of `lock_asset` and queue the order, or change nothing.

        With a `signature`, the request's replay guard is checked and set in the same call:
        status "replayed" (nothing written) when `sig:<signature>` exists; on "ok" it is set
        for `replay_guard_ms` (so a signed order costs one Redis round trip). On any other
        status the guard is not set: the caller sets it (auth.TIMESTAMP_WINDOW_MS rules).

        `record_tail_json` is the OrderRecord JSON without its opening brace and without
        orderId/createdMs/updatedMs, which the script fills in. The stream entry carries
        ENTRY_FIELDS: order id, user id, lock asset, locked units and the command JSON.
        Status "ok" | "replayed" | "dup" | "insufficient"; raises LedgerScriptError on
        corrupt data.
        """
        call = enqueue_call(symbol=symbol, user_id=user_id, lock_asset=lock_asset,
                            lock_units=lock_units, command_json=command_json,
                            record_tail_json=record_tail_json, client_order_id=client_order_id,
                            signature=signature, replay_guard_ms=replay_guard_ms)
        return enqueued(await self._enqueue(keys=call.keys, args=call.args))

    async def settle(
        self,
        *,
        symbol: str,
        epoch: int,
        first_seq: int,
        last_seq: int,
        batch_json: str | bytes,
        balances: list[BalanceChange],
        orders: list[OrderWrite],
        notify_users: Collection[str] = (),
        now_ms: int = 0,
        market_data: MarketDataWrite | None = None,
    ) -> SettleResult:
        """Apply one engine batch: all of it or, on any status but "ok", nothing.
        With `market_data`, its writes and publishes follow in the same script call, only
        on "ok" (one round trip per batch; a refused batch publishes nothing).

        Status "ok" | "duplicate" | "gap" | "fenced" | "negative" (detail: key, field);
        raises LedgerScriptError on malformed or corrupt data. On "ok", `subscribed` holds
        the users of `notify_users` whose private-subscription expiry is >= `now_ms`.
        Changes to one user's asset are summed here, so each hash field appears once.
        """
        call = settle_call(symbol=symbol, epoch=epoch, first_seq=first_seq, last_seq=last_seq,
                           batch_json=batch_json, balances=balances, orders=orders,
                           notify_users=notify_users, now_ms=now_ms, market_data=market_data)
        return await self.run_settle(call)

    async def run_settle(self, call: ScriptCall) -> SettleResult:
        """Run a `settle_call` (loading the script when Redis does not know it)."""
        return settle_result(await self._settle(keys=call.keys, args=call.args))

    @property
    def settle_sha(self) -> str:
        """settle_batch.lua's SHA1, for an EVALSHA queued in a caller's pipeline (then
        `settle_result` reads its reply; on NOSCRIPT, `run_settle` loads and runs it)."""
        return str(self._settle.sha)

    async def move_funds(
        self, *, kind: str, user_id: str, asset: str, units: int, tx_id: str, record: dict[str, Any]
    ) -> tuple[str, dict[str, Any] | None]:
        """Deposit or withdraw once per txId: all writes or none, so a retry is always safe.
        Returns ("ok" | "dup" | "insufficient", stored record on "dup"); raises
        LedgerScriptError on corrupt stored data. No amount or total has a size limit."""
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
        """Per asset: held (all balances incl. fees), deposits, withdrawals.
        Conserved when held == deposits - withdrawals. Scans every balance hash."""
        report: dict[str, dict[str, int]] = {}

        def row(asset: str) -> dict[str, int]:
            return report.setdefault(asset, {"held": 0, "deposits": 0, "withdrawals": 0})

        async for key in self.redis.scan_iter(match=keys.balance_key("*"), count=1000):
            for field, value in (await self.redis.hgetall(key)).items():
                asset, _kind = as_text(field).rsplit(":", 1)
                row(asset)["held"] += int(as_text(value))
        for field, value in (await self.redis.hgetall(keys.LEDGER_TOTALS)).items():
            asset, kind = as_text(field).rsplit(":", 1)
            row(asset)[kind] += int(as_text(value))
        return report

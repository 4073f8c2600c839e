"""The ledger in Redis: balances, locks, order queueing and batch settlement via Lua.

Invariant, for every asset at every moment (checked by tests and `conservation_report`):
    sum over users (available + locked) + fee account = deposits - withdrawals
Every order on a command stream had its funds locked by the same script call that queued it.
A batch is settled at most once (by sequence) and only by the engine holding the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from cryptex_common import keys

LUA_DIR = Path(__file__).parent / "lua"
CLIENT_ORDER_ID_TTL_S = 24 * 3600
TERMINAL_ORDER_TTL_S = 7 * 24 * 3600


def lua_source(name: str) -> str:
    return (LUA_DIR / name).read_text()


@dataclass(frozen=True, slots=True)
class Enqueued:
    status: str  # "ok" | "dup" | "insufficient"
    order_id: int | None = None
    stream_id: str | None = None


@dataclass(frozen=True, slots=True)
class SettleResult:
    status: str  # "ok" | "duplicate" | "gap" | "fenced" | "negative"
    detail: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BalanceChange:
    user_id: str
    asset: str
    available_delta: int
    locked_delta: int


@dataclass(frozen=True, slots=True)
class OrderWrite:
    order_id: int
    user_id: str
    record_json: str
    terminal: bool


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Ledger:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(lua_source("enqueue_order.lua"))
        self._settle = redis.register_script(lua_source("settle_batch.lua"))
        self._move = redis.register_script(lua_source("move_funds.lua"))

    async def enqueue_order(
        self,
        *,
        symbol: str,
        user_id: str,
        lock_asset: str,
        lock_units: int,
        command_json: str,
        record_tail_json: str,
        client_order_id: str | None,
    ) -> Enqueued:
        """Lock `lock_units` of `lock_asset` and queue the order, or change nothing.

        `record_tail_json` is the OrderRecord JSON without its opening brace and without
        orderId/createdMs/updatedMs, which the script fills in.
        """
        if lock_units <= 0:
            raise ValueError("an order must lock a positive amount")
        coid_key = keys.client_order_key(user_id, client_order_id) if client_order_id else "-"
        reply = await self._enqueue(
            keys=[
                keys.balance_key(user_id),
                keys.commands_stream(symbol),
                keys.ORDER_ID_COUNTER,
                keys.open_orders_key(user_id),
                coid_key,
            ],
            args=[
                keys.available_field(lock_asset),
                keys.locked_field(lock_asset),
                str(lock_units),
                command_json,
                "1" if client_order_id else "0",
                CLIENT_ORDER_ID_TTL_S,
                symbol,
                user_id,
                record_tail_json,
                keys.user_channel(user_id),
                orjson.dumps({"type": "balance", "data": {"assets": [lock_asset]}}).decode(),
            ],
        )
        status = _s(reply[0])
        if status == "ok":
            return Enqueued("ok", int(_s(reply[1])), _s(reply[2]))
        if status == "dup":
            return Enqueued("dup", int(_s(reply[1])))
        return Enqueued(status)

    async def settle(
        self,
        *,
        symbol: str,
        epoch: int,
        first_seq: int,
        last_seq: int,
        batch_json: str,
        balances: list[BalanceChange],
        orders: list[OrderWrite],
    ) -> SettleResult:
        """Apply one engine batch. Balance changes for the same user and asset are summed
        here so the script checks each hash field once."""
        net: dict[tuple[str, str], int] = {}
        for ch in balances:
            if ch.available_delta:
                k = (keys.balance_key(ch.user_id), keys.available_field(ch.asset))
                net[k] = net.get(k, 0) + ch.available_delta
            if ch.locked_delta:
                k = (keys.balance_key(ch.user_id), keys.locked_field(ch.asset))
                net[k] = net.get(k, 0) + ch.locked_delta
        args: list[Any] = [
            str(epoch),
            str(first_seq),
            str(last_seq),
            batch_json,
            TERMINAL_ORDER_TTL_S,
        ]
        changes = [(k, f, d) for (k, f), d in net.items() if d]
        args.append(len(changes))
        for key, field, delta in changes:
            args += [key, field, str(delta)]
        args.append(len(orders))
        for o in orders:
            args += [o.order_id, o.user_id, o.record_json, "1" if o.terminal else "0"]
        reply = await self._settle(
            keys=[
                keys.engine_epoch_key(symbol),
                keys.engine_lease_key(symbol),
                keys.settled_seq_key(symbol),
                keys.events_stream(symbol),
            ],
            args=args,
        )
        return SettleResult(_s(reply[0]), tuple(_s(x) for x in reply[1:]))

    async def move_funds(
        self, *, kind: str, user_id: str, asset: str, units: int, tx_id: str, record: dict[str, Any]
    ) -> tuple[str, dict[str, Any] | None]:
        """Deposit or withdraw once per txId. Returns (status, stored record on "dup")."""
        if kind not in ("deposit", "withdraw") or units <= 0:
            raise ValueError("kind must be deposit/withdraw and units positive")
        totals_field = f"{asset}:{'deposits' if kind == 'deposit' else 'withdrawals'}"
        reply = await self._move(
            keys=[keys.tx_key(tx_id), keys.balance_key(user_id), keys.LEDGER_TOTALS],
            args=[kind, keys.available_field(asset), str(units), totals_field,
                  orjson.dumps(record).decode()],
        )
        status = _s(reply[0])
        stored = orjson.loads(_s(reply[1])) if status == "dup" else None
        return status, stored

    async def balances(self, user_id: str) -> dict[str, dict[str, int]]:
        """{asset: {"available": n, "locked": n}} in smallest units."""
        raw = await self.redis.hgetall(keys.balance_key(user_id))
        out: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            asset, kind = _s(field).rsplit(":", 1)
            out.setdefault(asset, {"available": 0, "locked": 0})[kind] = int(_s(value))
        return out

    async def conservation_report(self) -> dict[str, dict[str, int]]:
        """Per asset: held (all balances incl. fees), deposits, withdrawals.
        Conserved when held == deposits - withdrawals. Scans every balance hash."""
        report: dict[str, dict[str, int]] = {}

        def row(asset: str) -> dict[str, int]:
            return report.setdefault(asset, {"held": 0, "deposits": 0, "withdrawals": 0})

        async for key in self.redis.scan_iter(match="balance:*", count=1000):
            for field, value in (await self.redis.hgetall(key)).items():
                asset, _kind = _s(field).rsplit(":", 1)
                row(asset)["held"] += int(_s(value))
        for field, value in (await self.redis.hgetall(keys.LEDGER_TOTALS)).items():
            asset, kind = _s(field).rsplit(":", 1)
            row(asset)[kind] += int(_s(value))
        return report

"""Helpers for dbproc tests: market specs, a generator of real EventBatch stream entries,
table dumps, candle recomputation from the raw trades, and a processor run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common.candles import Candle, TradeTick, aggregate
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import EVENT_BATCH_ADAPTER, EventBatch
from cryptex_common.registry import register_market
from cryptex_dbproc.processor import DbProcessor
from cryptex_dbproc.settings import DbprocSettings
from cryptex_launcher.stack import as_postgres, pg_bin
from tests.support.servers import PostgresServer

SOL = MarketSpec.model_validate({
    "symbol": "SOL/USDC", "baseAsset": "SOL", "baseDecimals": 9, "quoteAsset": "USDC",
    "quoteDecimals": 6, "tickSize": "0.01", "lotSize": "0.001", "minQuantity": "0.001",
    "maxQuantity": "100000", "minNotional": "1", "makerFeeBps": 10, "takerFeeBps": 20,
})
BTC = MarketSpec.model_validate({
    "symbol": "BTC/USDC", "baseAsset": "BTC", "baseDecimals": 8, "quoteAsset": "USDC",
    "quoteDecimals": 6, "tickSize": "0.1", "lotSize": "0.00001", "minQuantity": "0.00001",
    "maxQuantity": "1000", "minNotional": "5", "makerFeeBps": 10, "takerFeeBps": 20,
})
MONDAY_2024_01_08_MS = 1_704_672_000_000  # a Monday 00:00 UTC


class BatchGen:
    """Engine-like settled batches for one market: gap-free seqs, increasing trade ids,
    two order updates per trade (taker and maker), exact integer amounts."""

    def __init__(self, spec: MarketSpec, seed: int = 1, start_ms: int = MONDAY_2024_01_08_MS):
        self.spec = spec
        self.rules = spec.rules()
        self.rng = random.Random(seed)
        self.seq = 0
        self.trade_id = 0
        self.order_id = seed * 10_000_000  # order ids are global: keep gens apart
        self.ts_ms = start_ms
        self.price_ticks = 15_000

    def _order(self, oid: int, user: str, side: str, lots: int, executed: int, ts_ms: int,
               seq: int) -> dict[str, Any]:
        status = "filled" if executed >= lots else "partially_filled"
        return {"type": "order", "seq": seq, "order": {
            "orderId": oid, "userId": user, "market": self.spec.symbol, "side": side,
            "orderType": "limit", "timeInForce": "GTC", "priceTicks": self.price_ticks,
            "quantityLots": lots, "executedLots": executed,
            "executedQuoteUnits": self.rules.notional_units(self.price_ticks, executed),
            "status": status, "createdMs": ts_ms, "updatedMs": ts_ms}}

    def batch(self, n_trades: int, step_ms: int = 997) -> dict[str, Any]:
        self.ts_ms += self.rng.randint(0, step_ms)
        first_seq = self.seq + 1
        events: list[dict[str, Any]] = []
        for _ in range(n_trades):
            self.seq += 1
            self.trade_id += 1
            self.price_ticks = max(1, self.price_ticks + self.rng.randint(-30, 30))
            lots = self.rng.randint(1, 5000)
            quote = self.rules.notional_units(self.price_ticks, lots)
            taker = self.rng.choice(["buy", "sell"])
            self.order_id += 2
            buy_oid, sell_oid = self.order_id - 1, self.order_id
            buy_user, sell_user = f"u{self.rng.randint(1, 5)}", f"u{self.rng.randint(1, 5)}"
            events.append({"type": "trade", "trade": {
                "tradeId": self.trade_id, "seq": self.seq, "market": self.spec.symbol,
                "priceTicks": self.price_ticks, "quantityLots": lots, "quoteUnits": quote,
                "takerSide": taker, "buyOrderId": buy_oid, "sellOrderId": sell_oid,
                "buyUserId": buy_user, "sellUserId": sell_user,
                "buyerFeeUnits": self.rules.base_units(lots) * 20 // 10_000,
                "sellerFeeUnits": quote * 10 // 10_000, "tsMs": self.ts_ms}})
            self.seq += 1
            events.append(self._order(buy_oid, buy_user, "buy", lots * 2, lots, self.ts_ms,
                                      self.seq))
            self.seq += 1
            events.append(self._order(sell_oid, sell_user, "sell", lots, lots, self.ts_ms,
                                      self.seq))
        return {"market": self.spec.symbol, "firstSeq": first_seq, "lastSeq": self.seq,
                "tsMs": self.ts_ms, "events": events}


def encode(batch: dict[str, Any] | EventBatch) -> bytes:
    model = batch if isinstance(batch, EventBatch) else EVENT_BATCH_ADAPTER.validate_python(batch)
    return model.model_dump_json(by_alias=True).encode()


async def xadd_batches(redis: Redis, market: str, batches: list[dict[str, Any]]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for b in batches:
            pipe.xadd(keys.events_stream(market), {"b": encode(b)})
        await pipe.execute()


async def register(redis: Redis, *specs: MarketSpec) -> None:
    for spec in specs:
        await register_market(redis, spec)


def settings_for(db_url: str, redis_url: str, **overrides: Any) -> DbprocSettings:
    return DbprocSettings(database_url=db_url, redis_url=redis_url, dbproc_block_ms=50,
                          dbproc_retry_max_s=0.5, **overrides)


@contextlib.asynccontextmanager
async def running(settings: DbprocSettings) -> AsyncIterator[DbProcessor]:
    """A DbProcessor running in this event loop; stopped (and awaited) on exit."""
    redis = Redis.from_url(settings.redis_url)
    stop = asyncio.Event()
    proc = DbProcessor(settings, redis, stop)
    task = asyncio.create_task(proc.run())
    try:
        yield proc
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await redis.aclose()


# dbproc commits asynchronously; a database not answering yet means "not yet"
DB_NOT_YET = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def count(db_url: str, sql: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def stream_drained(redis: Redis, market: str) -> bool:
    """Every entry of the market's stream delivered to dbproc and acked."""
    stream = keys.events_stream(market)
    if not await redis.exists(stream):
        return False
    groups = await redis.xinfo_groups(stream)
    group = next((g for g in groups if g["name"] in (b"dbproc", "dbproc")), None)
    if group is None:
        return False
    last = (await redis.xinfo_stream(stream))["last-generated-id"]
    return group["pending"] == 0 and group["last-delivered-id"] == last


DUMP_SQL = {
    "trades": "SELECT * FROM trades ORDER BY market, trade_id",
    "fills": "SELECT * FROM fills ORDER BY market, trade_id, side",
    "orders": "SELECT * FROM orders ORDER BY order_id",
    "candles": "SELECT * FROM candles ORDER BY market, interval, open_time_ms",
    "stream_cursors": "SELECT market, last_id_ms, last_id_seq, last_seq FROM stream_cursors"
                      " ORDER BY market",
}


async def dump(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(db_url)
    try:
        return {t: [tuple(r.values()) for r in await conn.fetch(q)] for t, q in DUMP_SQL.items()}
    finally:
        await conn.close()


async def candles_from_db(db_url: str) -> dict[tuple[str, str, int], Candle]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT * FROM candles")
    finally:
        await conn.close()
    return {
        (r["market"], r["interval"], r["open_time_ms"]): Candle(
            r["market"], r["interval"], r["open_time_ms"], r["first_trade_id"],
            r["open_ticks"], r["last_trade_id"], r["close_ticks"], r["high_ticks"],
            r["low_ticks"], int(r["volume_lots"]), int(r["quote_volume_units"]),
            r["trade_count"])
        for r in rows
    }


async def candles_recomputed(db_url: str) -> dict[tuple[str, str, int], Candle]:
    """Candles from the raw trades table, aggregated from scratch in one pass."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT market, trade_id, ts_ms, price_ticks, quantity_lots, quote_units FROM trades")
    finally:
        await conn.close()
    by_market: dict[str, list[TradeTick]] = {}
    for r in rows:
        by_market.setdefault(r["market"], []).append(TradeTick(
            r["trade_id"], r["ts_ms"], r["price_ticks"], r["quantity_lots"],
            int(r["quote_units"])))
    out: dict[tuple[str, str, int], Candle] = {}
    for market, ticks in by_market.items():
        out.update(aggregate(market, ticks))
    return out


def _pg_ctl(server: PostgresServer, *args: str) -> None:
    subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", server.dir, *args]),
                   check=True, capture_output=True)


def restart_postgres(server: PostgresServer) -> None:
    """Start a stopped server again on the same port (tests.support.servers' options)."""
    opts = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.dir} -c fsync=off"
    _pg_ctl(server, "-o", opts, "-l", f"{server.dir}/log", "-w", "start")

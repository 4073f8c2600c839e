"""The API read side (cryptex_api.history) over tables written by a real dbproc run:
klines paging returns every candle exactly once, formats, history paging, and query parsing
errors that name the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest
from redis.asyncio import Redis

from cryptex_api.history import (
    INTERVAL_MS,
    HistoryReader,
    parse_fills_query,
    parse_klines_query,
    parse_orders_history_query,
    parse_trades_query,
)
from cryptex_common.candles import INTERVALS
from cryptex_common.errors import CryptexError, ErrorCode
from tests.dbproc.support import (
    BTC,
    DB_NOT_YET,
    MONDAY_2024_01_08_MS,
    SOL,
    BatchGen,
    register,
    running,
    settings_for,
    stream_drained,
    xadd_batches,
)
from tests.support.eventually import eventually
from tests.support.servers import RedisServer


@pytest.fixture
async def reader(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> AsyncIterator[HistoryReader]:
    await register(redis_client, SOL, BTC)
    sol = BatchGen(SOL, seed=41, start_ms=MONDAY_2024_01_08_MS - 3 * 86_400_000)
    btc = BatchGen(BTC, seed=42)
    await xadd_batches(redis_client, SOL.symbol, [sol.batch(3, step_ms=900_000)
                                                  for _ in range(400)])
    await xadd_batches(redis_client, BTC.symbol, [btc.batch(2) for _ in range(20)])
    async with running(settings_for(db_url, redis_srv.url)):
        async def done() -> bool:
            return (await stream_drained(redis_client, SOL.symbol)
                    and await stream_drained(redis_client, BTC.symbol))
        await eventually(done, timeout_s=30, ignoring=DB_NOT_YET)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        yield HistoryReader(pool, {SOL.symbol: SOL, BTC.symbol: BTC})
    finally:
        await pool.close()


@pytest.mark.parametrize("interval", INTERVALS)
async def test_klines_paging_returns_every_candle_exactly_once(
    reader: HistoryReader, interval: str
) -> None:
    async with reader.pool.acquire() as conn:
        expected = [r[0] for r in await conn.fetch(
            "SELECT open_time_ms FROM candles WHERE market='SOL/USDC' AND interval=$1"
            " ORDER BY open_time_ms", interval)]
    assert expected
    seen: list[int] = []
    start_ms = 0
    while True:
        page = await reader.klines(SOL, interval, start_ms, None, 7)
        if not page:
            break
        assert len(page) <= 7
        seen += [row[0] for row in page]
        start_ms = page[-1][0] + 1  # the documented way to the next page
    assert seen == expected


async def test_klines_row_format_and_newest_without_start(reader: HistoryReader) -> None:
    async with reader.pool.acquire() as conn:
        c = await conn.fetchrow("SELECT * FROM candles WHERE market='SOL/USDC' AND interval='1h'"
                                " ORDER BY open_time_ms DESC LIMIT 1")
    rows = await reader.klines(SOL, "1h", None, None, 3)
    assert len(rows) == 3 and rows[0][0] < rows[1][0] < rows[2][0]
    last = rows[-1]
    assert last == [
        c["open_time_ms"],
        *(str(Decimal(c[k]) * Decimal("0.01"))
          for k in ("open_ticks", "high_ticks", "low_ticks", "close_ticks")),
        reader.wire(SOL).quantity(int(c["volume_lots"])),
        c["open_time_ms"] + INTERVAL_MS["1h"] - 1,
        reader.wire(SOL).quote(int(c["quote_volume_units"])),
        c["trade_count"],
    ]
    assert all(isinstance(v, str) for v in last[1:6]) and isinstance(last[7], str)
    # endTime bounds the open time, inclusive
    bounded = await reader.klines(SOL, "1h", None, rows[1][0], 2)
    assert [r[0] for r in bounded] == [rows[0][0], rows[1][0]]
    # startTime after every candle: empty, not an error
    assert await reader.klines(SOL, "1d", 4_000_000_000_000, None, 10) == []


async def test_orders_history_pages_newest_first(reader: HistoryReader) -> None:
    async with reader.pool.acquire() as conn:
        expected = [str(r[0]) for r in await conn.fetch(
            "SELECT order_id FROM orders WHERE user_id='u1' ORDER BY order_id DESC")]
    seen: list[str] = []
    before = None
    while True:
        page = await reader.orders_history("u1", None, None, None, 50, before)
        if not page:
            break
        seen += [o["orderId"] for o in page]
        before = int(page[-1]["orderId"])
    assert seen == expected and len(expected) > 50
    btc_only = await reader.orders_history("u1", "BTC/USDC", None, None, 1000)
    assert btc_only and all(o["market"] == "BTC/USDC" for o in btc_only)
    o = btc_only[0]
    assert o["status"] in ("filled", "partially_filled") and "." in o["price"]
    assert isinstance(o["createdAt"], int)


async def test_fills_newest_first_and_from_trade_id(reader: HistoryReader) -> None:
    fills = await reader.fills("u2", "SOL/USDC", None, None, 1000)
    assert fills and all(f["market"] == "SOL/USDC" for f in fills)
    ts = [f["ts"] for f in fills]
    assert ts == sorted(ts, reverse=True)
    buy = next(f for f in fills if f["side"] == "buy")
    assert buy["feeAsset"] == "SOL" and buy["liquidity"] in ("maker", "taker")
    forward = await reader.fills("u2", "SOL/USDC", None, None, 5, from_trade_id=100)
    ids = [int(f["tradeId"]) for f in forward]
    assert ids == sorted(ids) and ids[0] >= 100
    window = await reader.fills("u2", None, ts[-1], ts[-1], 1000)
    assert window and all(f["ts"] == ts[-1] for f in window)


async def test_trades_newest_first_paging(reader: HistoryReader) -> None:
    seen: list[int] = []
    before = None
    while True:
        page = await reader.trades(BTC, 15, before)
        if not page:
            break
        seen += [int(t["tradeId"]) for t in page]
        before = int(page[-1]["tradeId"])
    assert seen == list(range(40, 0, -1))
    assert set(page_keys := (await reader.trades(BTC, 1))[0]) >= {"price", "quantity", "ts"}
    assert "buyUserId" not in page_keys


async def test_delisted_market_formats_from_stored_spec(reader: HistoryReader) -> None:
    bare = HistoryReader(reader.pool, {})  # registry no longer knows any market
    fills = await bare.fills("u1", None, None, None, 5)
    assert fills and all("." in f["price"] for f in fills)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"market": "SOL/USDC", "interval": "2m"}, "interval"),
        ({"market": "SOL/USDC", "interval": "1m", "startTime": "10", "endTime": "9"},
         "startTime"),
        ({"market": "SOL/USDC", "interval": "1m", "limit": "1001"}, "limit"),
        ({"market": "SOL/USDC", "interval": "1m", "limit": "0"}, "limit"),
        ({"market": "SOL/USDC", "interval": "1m", "limit": "ten"}, "limit"),
        ({"market": "SOL/USDC", "interval": "1m", "startTime": "1.5"}, "startTime"),
        ({"market": "SOL/USDC", "interval": "1m", "endTime": "-1"}, "endTime"),
        ({"market": "SOL/USDC", "interval": "1m", "startTime": "9" * 20}, "startTime"),
    ],
)
def test_bad_klines_params_name_the_field(query: dict[str, str], field: str) -> None:
    with pytest.raises(CryptexError) as err:
        parse_klines_query(query)
    assert err.value.code == ErrorCode.INVALID_FIELD
    assert err.value.field == field and field in err.value.message
    assert err.value.http_status == 400


@pytest.mark.parametrize(
    ("parse", "query", "field"),
    [
        (parse_klines_query, {"interval": "1m"}, "market"),
        (parse_klines_query, {"market": "sol_usdc"}, "interval"),
        (parse_trades_query, {}, "market"),
    ],
)
def test_missing_required_params(parse, query: dict[str, str], field: str) -> None:
    with pytest.raises(CryptexError) as err:
        parse(query)
    assert err.value.code == ErrorCode.MISSING_FIELD and err.value.field == field


def test_other_queries_parse_and_refuse() -> None:
    q = parse_klines_query({"market": "sol_usdc", "interval": "1w", "limit": "1000"})
    assert (q.market, q.interval, q.limit, q.start_ms) == ("SOL/USDC", "1w", 1000, None)
    assert parse_orders_history_query({}).limit == 100
    assert parse_fills_query({"market": "SOL-USDC", "fromId": "7"}).from_trade_id == 7
    assert parse_trades_query({"market": "BTC/USDC", "beforeId": "5"}).before_trade_id == 5
    for bad, field in (
        (lambda: parse_orders_history_query({"startTime": "5", "endTime": "4"}), "startTime"),
        (lambda: parse_orders_history_query({"beforeOrderId": "x"}), "beforeOrderId"),
        (lambda: parse_fills_query({"limit": "100000"}), "limit"),
        (lambda: parse_fills_query({"fromId": "3"}), "market"),
        (lambda: parse_trades_query({"market": "BTC/USDC", "beforeId": "1e3"}), "beforeId"),
    ):
        with pytest.raises(CryptexError) as err:
            bad()
        assert err.value.field == field and err.value.http_status == 400

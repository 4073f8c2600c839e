"""dbproc against a real Redis and PostgreSQL, in-process: rows, candles vs. raw trades,
replays, dead letters, pending entries after a restart, new markets, a database outage."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, cast

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from cryptex_common import keys, metrics
from cryptex_common.messages import FillRecord, TradeRecord
from cryptex_common.wire import fills_for_trade
from cryptex_dbproc.migrate import migrate
from tests.dbproc.support import (
    BTC,
    DB_NOT_YET,
    MONDAY_2024_01_08_MS,
    SOL,
    BatchGen,
    candles_from_db,
    candles_recomputed,
    count,
    dump,
    encode,
    register,
    restart_postgres,
    running,
    settings_for,
    stream_drained,
    xadd_batches,
)
from tests.support.eventually import eventually
from tests.support.servers import RedisServer, new_database, start_postgres


async def drained(redis: Redis, *markets: str) -> bool:
    return all([await stream_drained(redis, m) for m in markets])


async def test_writes_trades_fills_orders_and_exact_candles(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    await register(redis_client, SOL, BTC)
    # from Sunday 00:00 UTC, steps of up to 40 minutes (about 50 h): trades cross the
    # 1m..1d edges and the Monday 00:00 week edge
    sol = BatchGen(SOL, seed=1, start_ms=MONDAY_2024_01_08_MS - 86_400_000)
    btc = BatchGen(BTC, seed=2)
    sol_batches = [sol.batch(random.Random(i).randint(1, 20), step_ms=2_400_000)
                   for i in range(150)]
    btc_batches = [btc.batch(3) for _ in range(40)]
    await xadd_batches(redis_client, SOL.symbol, sol_batches)
    await xadd_batches(redis_client, BTC.symbol, btc_batches)
    async with running(settings_for(db_url, redis_srv.url)):
        await eventually(lambda: drained(redis_client, SOL.symbol, BTC.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    n_sol = sol.trade_id
    assert await count(db_url, "SELECT count(*) FROM trades WHERE market='SOL/USDC'") == n_sol
    assert await count(db_url, "SELECT count(*) FROM trades WHERE market='BTC/USDC'") == 120
    assert await count(db_url, "SELECT count(*) FROM fills") == 2 * (n_sol + 120)
    assert await count(db_url, "SELECT count(*) FROM orders") == 2 * (n_sol + 120)
    got, expected = await candles_from_db(db_url), await candles_recomputed(db_url)
    assert got == expected
    weeks = {k[2] for k in got if k[0] == "SOL/USDC" and k[1] == "1w"}
    assert len(weeks) >= 2, "the data should cross a week edge"
    conn = await asyncpg.connect(db_url)
    try:
        # every stored fill is exactly what the shared contract (wire.fills_for_trade) says
        specs = {SOL.symbol: SOL, BTC.symbol: BTC}
        stored = {(f.market, f.trade_id, f.side.value): f for f in map(
            _fill_record, await conn.fetch("SELECT * FROM fills"))}
        expected = {}
        for row in await conn.fetch("SELECT * FROM trades"):
            trade = _trade_record(row)
            spec = specs[trade.market]
            for f in fills_for_trade(trade, spec.base_asset, spec.quote_asset):
                expected[(f.market, f.trade_id, f.side.value)] = f
        assert stored == expected
        cursor = await conn.fetchrow("SELECT * FROM stream_cursors WHERE market='SOL/USDC'")
        assert cursor["last_seq"] == sol.seq
        assert await conn.fetchval("SELECT count(*) FROM markets") == 2
    finally:
        await conn.close()


def _trade_record(r: asyncpg.Record) -> TradeRecord:
    return TradeRecord(
        tradeId=r["trade_id"], seq=r["seq"], market=r["market"], priceTicks=r["price_ticks"],
        quantityLots=r["quantity_lots"], quoteUnits=int(r["quote_units"]),
        takerSide=r["taker_side"], buyOrderId=r["buy_order_id"], sellOrderId=r["sell_order_id"],
        buyUserId=r["buy_user_id"], sellUserId=r["sell_user_id"],
        buyerFeeUnits=int(r["buyer_fee_units"]), sellerFeeUnits=int(r["seller_fee_units"]),
        tsMs=r["ts_ms"])


def _fill_record(r: asyncpg.Record) -> FillRecord:
    return FillRecord(
        tradeId=r["trade_id"], orderId=r["order_id"], userId=r["user_id"], market=r["market"],
        side=r["side"], priceTicks=r["price_ticks"], quantityLots=r["quantity_lots"],
        quoteUnits=int(r["quote_units"]), feeUnits=int(r["fee_units"]),
        feeAsset=r["fee_asset"], isMaker=r["is_maker"], tsMs=r["ts_ms"])


async def test_out_of_order_batches_give_the_same_candles(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    """Batches arriving late (trade ids out of order across entries) still land in the
    right bucket with open/close by trade id."""
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=7)
    batches = [gen.batch(5, step_ms=50_000) for _ in range(60)]
    random.Random(3).shuffle(batches)
    async with running(settings_for(db_url, redis_srv.url, dbproc_read_count=7)):
        for i in range(0, 60, 10):  # several rounds
            await xadd_batches(redis_client, SOL.symbol, batches[i:i + 10])
            await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    assert await count(db_url, "SELECT count(*) FROM trades") == 300
    assert await candles_from_db(db_url) == await candles_recomputed(db_url)


async def test_replaying_the_whole_stream_twice_changes_nothing(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    await register(redis_client, SOL, BTC)
    sol, btc = BatchGen(SOL, seed=11), BatchGen(BTC, seed=12)
    await xadd_batches(redis_client, SOL.symbol, [sol.batch(4) for _ in range(80)])
    await xadd_batches(redis_client, BTC.symbol, [btc.batch(2) for _ in range(30)])
    settings = settings_for(db_url, redis_srv.url)
    async with running(settings):
        await eventually(lambda: drained(redis_client, SOL.symbol, BTC.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    first = await dump(db_url)
    assert len(first["trades"]) == 380

    for forget_cursors in (False, True):
        # Replay 1: the group re-delivers everything; the stored cursors skip it.
        # Replay 2: cursors erased too, so every row is offered again; keys refuse them.
        if forget_cursors:
            conn = await asyncpg.connect(db_url)
            await conn.execute("DELETE FROM stream_cursors")
            await conn.close()
        for spec in (SOL, BTC):
            await redis_client.xgroup_setid(keys.events_stream(spec.symbol), "dbproc", "0")
        async with running(settings):
            await eventually(lambda: drained(redis_client, SOL.symbol, BTC.symbol), timeout_s=30, ignoring=DB_NOT_YET)
        assert await dump(db_url) == first


async def test_malformed_entries_are_dead_lettered_and_processing_continues(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=5)
    stream, dead = keys.events_stream(SOL.symbol), keys.dead_letter_stream(SOL.symbol)
    good_1 = gen.batch(3)
    other_market = BatchGen(BTC).batch(1)
    wrong_schema = gen.batch(1)
    wrong_schema["events"][0]["trade"]["priceTicks"] = "12.5"
    nul_user = gen.batch(2)  # valid JSON and schema; PostgreSQL text refuses NUL
    nul_user["events"][0]["trade"]["buyUserId"] = "bad\u0000user"
    huge = gen.batch(1)  # valid for the schema (Python int); BIGINT refuses it
    huge["events"][0]["trade"]["quantityLots"] = 2**70
    good_2 = gen.batch(3)
    # COPY text escaping: every special character is stored as sent
    odd_text = "tab\tnl\ncr\rback\\slash \\N \\. é"
    good_2["events"][0]["trade"]["buyUserId"] = odd_text
    good_2["events"][1]["order"]["userId"] = odd_text
    good_2["events"][1]["order"]["clientOrderId"] = odd_text
    await redis_client.xadd(stream, {"b": encode(good_1)})
    await redis_client.xadd(stream, {"b": b"{not json"})
    await redis_client.xadd(stream, {"x": b"1"})
    await redis_client.xadd(stream, {"b": orjson.dumps(other_market)})
    await redis_client.xadd(stream, {"b": orjson.dumps(wrong_schema)})
    await redis_client.xadd(stream, {"b": orjson.dumps(nul_user)})
    await redis_client.xadd(stream, {"b": json.dumps(huge).encode()})  # orjson: 64 bits max
    await redis_client.xadd(stream, {"b": encode(good_2)})
    async with running(settings_for(db_url, redis_srv.url)):
        await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    reasons = [f[b"reason"].decode() for _, f in await redis_client.xrange(dead)]
    assert len(reasons) == 6, reasons
    assert "invalid EventBatch" in reasons[0] and "missing field 'b'" in reasons[1]
    assert "batch market 'BTC/USDC'" in reasons[2]
    assert "priceTicks" in reasons[3]
    assert "database refused" in reasons[4] and "database refused" in reasons[5]
    # the good batches around them are all written (3 + 3 trades)
    assert await count(db_url, "SELECT count(*) FROM trades") == 6
    assert await count(db_url, "SELECT count(*) FROM fills") == 12
    assert await candles_from_db(db_url) == await candles_recomputed(db_url)
    conn = await asyncpg.connect(db_url)
    try:
        trade_id = good_2["events"][0]["trade"]["tradeId"]
        assert await conn.fetchval(
            "SELECT buy_user_id FROM trades WHERE trade_id = $1", trade_id) == odd_text
        order_id = good_2["events"][1]["order"]["orderId"]
        row = await conn.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
        assert (row["user_id"], row["client_order_id"], row["reason"]) == (odd_text, odd_text,
                                                                           None)
    finally:
        await conn.close()


async def test_a_round_mixing_stored_and_new_trades_counts_only_the_new_ones(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    """Cursors lost and the group rewound to the middle: one round holds trades already
    stored and new ones; candles take only the new ones (the recomputed-deltas path)."""
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=13)
    stream = keys.events_stream(SOL.symbol)
    await xadd_batches(redis_client, SOL.symbol, [gen.batch(5, step_ms=20_000)
                                                  for _ in range(20)])
    settings = settings_for(db_url, redis_srv.url)
    async with running(settings):
        await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    middle = cast(list[Any], await redis_client.xrange(stream))[9][0]  # 10th entry's id
    conn = await asyncpg.connect(db_url)
    await conn.execute("DELETE FROM stream_cursors")
    await conn.close()
    await redis_client.xgroup_setid(stream, "dbproc", middle)
    await xadd_batches(redis_client, SOL.symbol, [gen.batch(5, step_ms=20_000)
                                                  for _ in range(10)])
    async with running(settings):
        await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    assert await count(db_url, "SELECT count(*) FROM trades") == 150
    assert await count(db_url, "SELECT count(*) FROM fills") == 300
    assert await candles_from_db(db_url) == await candles_recomputed(db_url)


async def test_light_traffic_is_written_in_few_rounds(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    """issue 12: entries arriving one by one are not written one round each: after a read
    that was not full, the next read lingers and takes everything that arrived meanwhile."""
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=21)
    rounds: list[int] = []
    async with running(settings_for(db_url, redis_srv.url, dbproc_linger_ms=1_000)) as proc:
        process = proc.process

        async def counted(raw: Any, decoded: Any = None) -> Any:
            rounds.append(sum(len(e) for e in raw.values()))
            return await process(raw, decoded)

        proc.process = counted  # type: ignore[method-assign]
        for _ in range(20):
            await xadd_batches(redis_client, SOL.symbol, [gen.batch(1)])
            await asyncio.sleep(0.005)
        await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    assert sum(rounds) == 20
    assert len(rounds) <= 3, rounds  # 1 + the rest after the linger (+1 if the box stalled)
    assert await candles_from_db(db_url) == await candles_recomputed(db_url)


async def test_full_reads_never_linger(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    """A read that got `dbproc_read_count` entries is followed by the next read at once: a
    backlog drains at full speed, however long the linger (here 10 s per read)."""
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=22)
    await xadd_batches(redis_client, SOL.symbol, [gen.batch(2) for _ in range(40)])
    settings = settings_for(db_url, redis_srv.url, dbproc_read_count=5, dbproc_linger_ms=10_000)
    async with running(settings):
        await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    assert await count(db_url, "SELECT count(*) FROM trades") == 80


async def test_staging_tables_are_emptied_every_round_and_truncated(
    redis_client: Redis, redis_srv: RedisServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COPY staging tables are emptied by the statements that read them (not at COMMIT,
    which cost a truncation per round) and truncated every TRUNCATE_STAGING_ROWS rows."""
    from cryptex_dbproc import store

    monkeypatch.setattr(store, "TRUNCATE_STAGING_ROWS", 25)
    truncates: list[int] = []
    truncate = store.truncate_staging

    async def counted(conn: asyncpg.Connection) -> None:
        truncates.append(1)
        await truncate(conn)

    monkeypatch.setattr(store, "truncate_staging", counted)
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=23)
    async with running(settings_for(db_url, redis_srv.url, dbproc_linger_ms=0)) as proc:
        for _ in range(6):
            await xadd_batches(redis_client, SOL.symbol, [gen.batch(3) for _ in range(4)])
            await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
        assert proc.conn is not None  # idle between rounds: nothing else uses it now
        for table in (store.TMP_TRADES, store.TMP_ORDERS):
            assert await proc.conn.fetchval(f"SELECT count(*) FROM {table}") == 0
    assert truncates  # 72 trades + 144 order states staged, a TRUNCATE every 25 rows
    assert await count(db_url, "SELECT count(*) FROM trades") == 72
    assert await candles_from_db(db_url) == await candles_recomputed(db_url)


async def test_resumes_from_own_pending_entries_after_a_crash(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    """Entries delivered to the consumer but never acked (a crash before XACK) are read
    first on restart."""
    await register(redis_client, SOL)
    gen = BatchGen(SOL, seed=9)
    stream = keys.events_stream(SOL.symbol)
    await redis_client.xgroup_create(stream, "dbproc", id="0", mkstream=True)
    await xadd_batches(redis_client, SOL.symbol, [gen.batch(2) for _ in range(10)])
    delivered = await redis_client.xreadgroup("dbproc", "dbproc", {stream: ">"}, count=10)
    assert len(delivered[0][1]) == 10  # now pending, never acked
    await xadd_batches(redis_client, SOL.symbol, [gen.batch(2) for _ in range(5)])
    async with running(settings_for(db_url, redis_srv.url)):
        await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
    assert await count(db_url, "SELECT count(*) FROM trades") == 30


async def test_discovers_a_market_registered_while_running(
    redis_client: Redis, redis_srv: RedisServer, db_url: str
) -> None:
    await register(redis_client, SOL)
    async with running(settings_for(db_url, redis_srv.url)):
        await eventually(lambda: stream_drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
        await register(redis_client, BTC)  # publishes markets:changed
        await xadd_batches(redis_client, BTC.symbol, [BatchGen(BTC).batch(2)])
        await eventually(lambda: _has_trades(db_url, 2), timeout_s=10, ignoring=DB_NOT_YET)


async def _has_trades(db_url: str, n: int) -> bool:
    return await count(db_url, "SELECT count(*) FROM trades") == n


@pytest.mark.slow
async def test_database_outage_waits_retries_and_resumes_without_loss(
    redis_client: Redis, redis_srv: RedisServer
) -> None:
    pg = start_postgres()  # our own server: this test stops and restarts it
    try:
        db_url = await new_database(pg)
        await register(redis_client, SOL)
        gen = BatchGen(SOL, seed=21)
        errors_before = metrics.POSTGRES_ERRORS.labels("dbproc")._value.get()
        async with running(settings_for(db_url, redis_srv.url)):
            await xadd_batches(redis_client, SOL.symbol, [gen.batch(3) for _ in range(20)])
            await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
            pg.stop()
            await xadd_batches(redis_client, SOL.symbol, [gen.batch(3) for _ in range(30)])
            await asyncio.sleep(2.0)  # dbproc retries with backoff meanwhile
            assert metrics.POSTGRES_ERRORS.labels("dbproc")._value.get() > errors_before
            assert not await stream_drained(redis_client, SOL.symbol), "acked while DB down"
            restart_postgres(pg)
            await xadd_batches(redis_client, SOL.symbol, [gen.batch(3) for _ in range(10)])
            await eventually(lambda: drained(redis_client, SOL.symbol), timeout_s=30, ignoring=DB_NOT_YET)
        assert await count(db_url, "SELECT count(*) FROM trades") == 180
        assert await count(db_url, "SELECT count(DISTINCT trade_id) FROM trades") == 180
        assert await candles_from_db(db_url) == await candles_recomputed(db_url)
    finally:
        pg.stop()


async def test_migrations_apply_once_and_use_no_floats(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        first = await migrate(conn)
        assert first == ["0001_initial.sql"]  # 0002 needs timescaledb, absent here
        assert await migrate(conn) == []
        floats = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema='public' AND data_type IN ('real', 'double precision')")
        assert floats == []
        numerics = await conn.fetch(
            "SELECT column_name, numeric_precision, numeric_scale FROM information_schema.columns"
            " WHERE table_schema='public' AND data_type = 'numeric'")
        assert numerics and all((r[1], r[2]) == (38, 0) for r in numerics)
    finally:
        await conn.close()


async def test_timescale_hypertables_when_the_extension_exists(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        if not available:
            pytest.skip("timescaledb is not in pg_available_extensions on this PostgreSQL "
                        "(Debian bookworm has no package; see research/tooling.md section 6)")
        assert await migrate(conn) == ["0001_initial.sql", "0002_timescale.sql"]
        tables = {r[0] for r in await conn.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert tables == {"trades", "candles"}
    finally:
        await conn.close()

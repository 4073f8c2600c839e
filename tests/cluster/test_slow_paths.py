"""Issue 16: the services' paths off the order path, on a real Redis Cluster (3 primaries,
3 replicas), where every multi-key command must keep to one hash slot.

- dbproc reads every market's `events:{M}` stream (each in its own slot): new entries and,
  after a restart, its pending ones; a new entry wakes an idle reader well before
  `dbproc_block_ms`; `markets:changed` reaches its cluster pub/sub;
- the admin API creates a user (`user:<id>` and `apikey:<key>`, two slots);
- the native and Binance all-market tickers read every market's `ticker:{M}`;
- the operator's drain reads a market's own keys in one MULTI (one slot);
- the gateway's upstream pub/sub receives PUBLISHes, whichever node they were sent to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from cryptex_api.admin_routes import AdminHandlers
from cryptex_api.binance.market import Market
from cryptex_api.public_routes import PublicHandlers
from cryptex_common import keys, redis_client
from cryptex_common.markets import MarketState
from cryptex_dbproc.deps import Dependencies
from cryptex_dbproc.markets import Markets
from cryptex_dbproc.processor import DbProcessor
from cryptex_dbproc.reader import StreamReader
from cryptex_operator import exchange
from cryptex_wsgateway.upstream import Upstream
from tests.dbproc.support import (
    BTC,
    SOL,
    BatchGen,
    count,
    encode,
    register,
    settings_for,
    stream_drained,
    xadd_batches,
)
from tests.support.eventually import eventually
from tests.support.redis_cluster import LocalCluster
from tests.support.servers import PostgresServer, new_database

pytestmark = pytest.mark.integration
ADA = SOL.model_copy(update={"symbol": "ADA/USDC", "base_asset": "ADA"})
MARKETS = (SOL, BTC, ADA)


@pytest.fixture
async def rc(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A cluster client on emptied primaries."""
    client = redis_client.connect(cluster.url, "test")
    assert isinstance(client, RedisCluster)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


@pytest.fixture
async def db_url(postgres: PostgresServer) -> str:
    return await new_database(postgres)


async def test_the_markets_are_in_different_slots_and_nodes(rc: RedisCluster) -> None:
    """What the tests below rely on: SOL's and BTC's keys are in different slots of one
    primary, ADA's on another primary."""
    sol, btc, ada = (keys.events_stream(m.symbol) for m in (SOL, BTC, ADA))
    assert len({key_slot(k.encode()) for k in (sol, btc, ada)}) == 3
    assert rc.get_node_from_key(sol).name == rc.get_node_from_key(btc).name
    assert rc.get_node_from_key(sol).name != rc.get_node_from_key(ada).name


# --- dbproc ------------------------------------------------------------------------------
@pytest.fixture
async def dbproc_settings(rc: RedisCluster, cluster: LocalCluster, db_url: str) -> Any:
    await register(rc, *MARKETS)
    return settings_for(db_url, cluster.url).model_copy(update={"dbproc_block_ms": 3000, "dbproc_linger_ms": 0})


async def _running(settings: Any) -> tuple[DbProcessor, asyncio.Task[None], asyncio.Event, Any]:
    redis = redis_client.connect(settings.redis_url, "dbproc")
    stop = asyncio.Event()
    proc = DbProcessor(settings, redis, stop)
    return proc, asyncio.create_task(proc.run()), stop, redis


async def _stopped(task: asyncio.Task[None], stop: asyncio.Event, redis: Any) -> None:
    stop.set()
    await asyncio.wait_for(task, 30)
    await redis.aclose()


async def test_dbproc_drains_markets_in_three_slots_and_an_idle_reader_wakes_at_once(
        rc: RedisCluster, dbproc_settings: Any, db_url: str) -> None:
    gens = {spec.symbol: BatchGen(spec, seed=i) for i, spec in enumerate(MARKETS)}
    for symbol, gen in gens.items():
        await xadd_batches(rc, symbol, [gen.batch(2) for _ in range(30)])
    proc, task, stop, redis = await _running(dbproc_settings)
    try:
        drained: bool = await eventually(_drained(rc, list(gens)), timeout_s=30, interval_s=0.05)
        assert drained
        for symbol in gens:
            assert await count(db_url, f"SELECT count(*) FROM trades WHERE market='{symbol}'") == 60
        # idle now (blocking 3 s per wait): a new entry of any market is written at once
        for symbol in (BTC.symbol, ADA.symbol, SOL.symbol):
            await asyncio.sleep(0.5)  # the reader is waiting
            before = await count(db_url, f"SELECT count(*) FROM trades WHERE market='{symbol}'")
            started = time.monotonic()
            await rc.xadd(keys.events_stream(symbol), {"b": encode(gens[symbol].batch(1))})
            more: bool = await eventually(_more_trades(db_url, symbol, before), timeout_s=10, interval_s=0.01)
            assert more
            assert time.monotonic() - started < 1.5, "the idle reader should wake on the new entry"
    finally:
        await _stopped(task, stop, redis)
    assert proc.reader._waiters == {}  # closed on stop


def _drained(rc: RedisCluster, markets: list[str]) -> Callable[[], Awaitable[bool]]:
    async def drained() -> bool:
        return all([await stream_drained(rc, m) for m in markets])
    return drained


def _more_trades(db_url: str, market: str, before: int) -> Callable[[], Awaitable[bool]]:
    async def more() -> bool:
        return await count(db_url, f"SELECT count(*) FROM trades WHERE market='{market}'") > before
    return more


async def test_dbproc_reads_its_pending_entries_of_two_markets_after_a_restart(
        rc: RedisCluster, dbproc_settings: Any) -> None:
    for i, spec in enumerate(MARKETS):
        await xadd_batches(rc, spec.symbol, [BatchGen(spec, seed=i).batch(1) for _ in range(i + 1)])
    deps = Dependencies(dbproc_settings, rc, asyncio.Event())
    markets = Markets(deps)
    reader = StreamReader(deps, markets)
    assert sorted(await markets.load()) == sorted(m.symbol for m in MARKETS)
    # a previous run read everything and crashed before its XACK
    first = await reader.read_round()
    assert {m: len(e) for m, e in first.items()} == {SOL.symbol: 1, BTC.symbol: 2, ADA.symbol: 3}
    restarted = StreamReader(deps, markets)
    for market in markets.specs:
        restarted.track(market)
    pending = await restarted.read_round()
    assert {m: [i for i, _ in e] for m, e in pending.items()} == {m: [i for i, _ in e] for m, e in first.items()}
    assert await restarted.read_round() == {}  # pending drained, nothing new: waited, empty
    assert restarted.pending_from == {}
    await restarted.close()
    await reader.close()


async def test_dbproc_recreates_a_deleted_group_on_the_cluster(rc: RedisCluster, dbproc_settings: Any) -> None:
    deps = Dependencies(dbproc_settings, rc, asyncio.Event())
    markets = Markets(deps)
    reader = StreamReader(deps, markets)
    await markets.load()
    await rc.delete(keys.events_stream(SOL.symbol))
    assert await reader.read_round() == {}  # NOGROUP: recreated
    await rc.xadd(keys.events_stream(SOL.symbol), {"b": encode(BatchGen(SOL, seed=5).batch(1))})
    assert list(await reader.read_round()) == [SOL.symbol]
    await reader.close()


async def test_dbproc_hears_markets_changed_on_the_cluster(rc: RedisCluster, dbproc_settings: Any) -> None:
    deps = Dependencies(dbproc_settings, rc, asyncio.Event())
    markets = Markets(deps)
    listener = asyncio.create_task(markets.listen_changed())
    try:
        await eventually(lambda: markets.refresh.is_set(), timeout_s=5)  # set on subscribing
        await asyncio.sleep(0.2)
        markets.refresh.clear()
        await rc.publish(keys.MARKETS_CHANGED_CHANNEL, b"{}")
        await eventually(lambda: markets.refresh.is_set(), timeout_s=5)
    finally:
        deps.stop.set()
        await asyncio.wait_for(listener, 5)


# --- API ---------------------------------------------------------------------------------
def _api(rc: RedisCluster, **more: Any) -> Any:
    return SimpleNamespace(redis=rc, public_redis=rc, auth=SimpleNamespace(check_admin=lambda _: None), **more)


async def test_admin_creates_a_user_whose_key_resolves(rc: RedisCluster) -> None:
    response = await AdminHandlers(_api(rc)).create_user(None)  # type: ignore[arg-type]
    assert response.status == 201
    assert response.body is not None
    made = orjson.loads(response.body)  # type: ignore[arg-type]
    assert key_slot(keys.user_key(made["userId"]).encode()) != key_slot(keys.api_key_key(made["apiKey"]).encode())
    assert await rc.get(keys.api_key_key(made["apiKey"])) == made["userId"].encode()
    assert await rc.hget(keys.user_key(made["userId"]), "apiSecret") == made["apiSecret"].encode()


async def test_all_market_tickers_native_and_binance(rc: RedisCluster) -> None:
    await rc.set(keys.ticker_key(SOL.symbol), orjson.dumps({"market": SOL.symbol, "count": 3, "last": "20.00"}))
    api = _api(rc, markets={SOL.symbol: SOL, BTC.symbol: BTC})
    response = await PublicHandlers(api).tickers(None)  # type: ignore[arg-type]
    assert response.body is not None
    assert orjson.loads(response.body) == [  # type: ignore[arg-type]
        {"market": BTC.symbol, "count": 0}, {"market": SOL.symbol, "count": 3, "last": "20.00"}]
    market = Market(SimpleNamespace(api=api))  # type: ignore[arg-type]
    got = await market._tickers([BTC, SOL], lambda spec, t, book: (spec.symbol, t.get("count"), book))
    assert got == [(BTC.symbol, None, {}), (SOL.symbol, 3, {})]


# --- operator ------------------------------------------------------------------------------
async def test_operator_drain_reads_the_market_in_one_transaction(rc: RedisCluster) -> None:
    assert await exchange.commands_pending(rc, SOL.symbol) == 0  # no stream yet
    await register(rc, SOL)  # queues its configure command
    assert await exchange.commands_pending(rc, SOL.symbol) == 1
    await rc.set(keys.settled_seq_key(SOL.symbol), 1)
    drain = await exchange.drain_state(rc, SOL.symbol)
    assert (drain.state, drain.commands_pending, drain.book_empty) == (MarketState.OPEN, 0, True)


# --- wsgateway -------------------------------------------------------------------------------
async def test_gateway_upstream_receives_publishes_sent_to_every_node(rc: RedisCluster) -> None:
    upstream = Upstream(rc)
    got: list[tuple[bytes, bytes]] = []
    channels = [keys.depth_channel(m).encode() for m in (SOL.symbol, BTC.symbol, "ETH/USDC", "XRP/USDC")]
    def route(channel: bytes) -> None:
        upstream.routes[channel] = lambda data: got.append((channel, data))

    for channel in channels:
        route(channel)
    connected = asyncio.Event()
    task = asyncio.create_task(upstream.listen(connected.set, lambda: None))
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.wait_for(asyncio.gather(*(upstream.confirmation(c) for c in channels)), 10)
        late = keys.trades_channel(SOL.symbol).encode()  # routed while connected
        route(late)
        await upstream.pubsub.subscribe(late)
        await asyncio.wait_for(upstream.confirmation(late), 10)
        for channel in [*channels, late]:
            await rc.publish(channel, b"x-" + channel)  # each sent to its channel's slot's node
        await eventually(lambda: len(got) == 5, timeout_s=5)
        assert sorted(got) == sorted((c, b"x-" + c) for c in [*channels, late])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await upstream.close()

"""The ledger scripts' contract (issue 11 defects 2, 6 and 7; issue 16): exact decimal
arithmetic in Lua, malformed arguments refused before any write, every written key declared
in KEYS and every script's keys in one hash slot, the lock envelope on each command entry,
and the subscribed users returned by settle."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from cryptex_common import keys
from cryptex_common.depth import read_depth
from cryptex_common.ledger import (
    ENTRY_COMMAND,
    ENTRY_LOCK_ASSET,
    ENTRY_LOCK_UNITS,
    ENTRY_ORDER_ID,
    ENTRY_OUTBOX,
    ENTRY_USER,
    BalanceChange,
    Ledger,
    LedgerScriptError,
    MarketDataWrite,
    OrderWrite,
    ScriptCall,
    SettleResult,
    enqueue_call,
    handover_call,
    ledger_script_source,
    lua_source,
    move_call,
    settle_plan,
)
from cryptex_common.resp_cluster import key_slot
from tests.ledger.test_ledger_properties import snapshot
from tests.support.depth_book import store_book

SYMBOL = "SOL/USDC"
INT64_MAX = 2**63 - 1
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CANONICAL = re.compile(r"0|-?[1-9][0-9]*")
GARBAGE = ("", "-0", "007", "abc", "-1", "1.5", "1e3", " 1", "0", "2", "99999999999999999999999")

signed = st.one_of(
    st.integers(-(2**80), 2**80),
    st.builds(lambda e, d, neg: (-1 if neg else 1) * (e + d),
              st.sampled_from([0, 2**53, 10**14, 10**15, 10**16, INT64_MAX, 10**21]),
              st.integers(-30, 30), st.booleans()),
)


# --- lib_decimal.lua ---------------------------------------------------------------------------
DECIMAL_PROBE = lua_source("lib_decimal.lua") + """
return {dec_add(ARGV[1], ARGV[2]), dec_sub(ARGV[1], ARGV[2]), tostring(dec_cmp(ARGV[1], ARGV[2])),
        tostring(dec_is_canonical(ARGV[3]))}
"""


@SETTINGS
@given(a=signed, b=signed, text=st.one_of(st.text("-+0123456789 .e", max_size=6), signed.map(str)))
async def test_decimal_arithmetic_equals_python_ints(redis_client: aioredis.Redis, a: int, b: int,
                                                     text: str) -> None:
    """issue 11 defect 2: add/sub/compare of decimal strings are exact at any size, on both
    sides of the 15-digit fast path, and only canonical integers are accepted."""
    total, diff, order, canonical = await redis_client.eval(DECIMAL_PROBE, 0, str(a), str(b), text)
    assert (int(total), int(diff)) == (a + b, a - b)
    assert (total.decode(), diff.decode()) == (str(a + b), str(a - b))  # canonical: no "-0", no zeros
    assert int(order) == (a > b) - (a < b)
    assert canonical == (b"true" if CANONICAL.fullmatch(text) else b"false")


# --- malformed arguments -----------------------------------------------------------------------
async def market_with_funds(redis: aioredis.Redis) -> None:
    await redis.set(keys.engine_epoch_key(SYMBOL), 1)
    await redis.set(keys.engine_lease_key(SYMBOL), 1)
    await redis.hset(keys.balance_key("1"), mapping={"USDC:available": 1000, "USDC:locked": 500})
    await redis.hset(keys.totals_key(keys.user_tag("1")), "USDC:deposits", 1500)
    await redis.hset(keys.order_key(ORDER_ID), "r", "old")
    await redis.zadd(keys.open_orders_key("1"), {str(ORDER_ID): ORDER_ID})


ORDER_ID = 7 * keys.USER_BUCKETS + 1  # an order of user "1" (bucket 1)
SCRIPTS = ["enqueue_order.lua", "handover.lua", "move_funds.lua", "settle_market.lua", "settle_bucket.lua"]


def valid_plan() -> Any:
    return settle_plan(symbol=SYMBOL, epoch=1, first_seq=1, last_seq=2, batch_json="{}",
                       balances=[BalanceChange("1", "USDC", 0, -100), BalanceChange("2", "USDC", 90, 0),
                                 BalanceChange(keys.FEE_ACCOUNT, "USDC", 10, 0)],
                       orders=[OrderWrite(ORDER_ID, "1", "{}", True)], notify_users=["1"], now_ms=5,
                       market_data=MARKET_DATA, user_messages=USER_MESSAGES, outbox_acks=[("1", "5-0")])


def valid_call(script: str) -> ScriptCall:
    if script == "enqueue_order.lua":
        return enqueue_call(symbol=SYMBOL, user_id="1", lock_asset="USDC", lock_units=100,
                            command_json="{}", record_tail_json="}", client_order_id="c1")
    if script == "handover.lua":
        return handover_call(symbol=SYMBOL, order_id=ORDER_ID, user_id="1", lock_asset="USDC", lock_units=100,
                             command_json="{}", outbox_id="5-0")
    if script == "move_funds.lua":
        return move_call(kind="withdraw", user_id="1", asset="USDC", units=10, tx_id="t", record={})
    plan = valid_plan()
    if script == "settle_market.lua":
        return plan.market
    return dict(plan.buckets)[keys.user_tag("1")]


# the market-data part of a settle call: every kind of write and publish it can carry
HEADER = '{"market":"SOL/USDC","lastUpdateId":2,"ts":5}'
MARKET_DATA = MarketDataWrite(SYMBOL, depth_header=HEADER,
                              depth_levels=[("b", 100, "1.00 5"), ("b", 99, "0.99 1"), ("a", 101, "1.01 2")],
                              recent_keep=2,
                              trades=['{"t":1}', '{"t":2}', '{"t":3}'],
                              publishes=[("reply:a", "[1]"), (keys.depth_channel(SYMBOL), "{}")])
USER_MESSAGES = [("1", keys.user_channel("1"), ["o1", "f1"]), ("2", keys.user_channel("2"), ["o2"])]


@pytest.mark.parametrize("script", SCRIPTS)
@SETTINGS
@given(data=st.data())
async def test_malformed_arguments_write_nothing(redis_client: aioredis.Redis, script: str,
                                                 data: st.DataObject) -> None:
    """issue 11 defect 2: one argument replaced by garbage, or one key or argument dropped:
    any reply but "ok", or any error, leaves every key byte-for-byte as it was."""
    await redis_client.flushdb()
    await market_with_funds(redis_client)
    call = valid_call(script)
    args, script_keys = [str(a) for a in call.args], list(call.keys)
    how = data.draw(st.sampled_from(["replace", "replace", "drop arg", "drop key"]))
    if how == "drop key":
        script_keys.pop(data.draw(st.integers(0, len(script_keys) - 1)))
    else:
        at = data.draw(st.integers(0, len(args) - 1))
        if how == "drop arg":
            args.pop(at)
        else:
            args[at] = data.draw(st.sampled_from(GARBAGE))
    before = await snapshot(redis_client)
    runner = redis_client.register_script(ledger_script_source(script))
    try:
        reply = await runner(keys=script_keys, args=args)
    except ResponseError:
        reply = [b"error"]
    if reply[0] != b"ok":
        assert await snapshot(redis_client) == before


@pytest.mark.parametrize("script", SCRIPTS)
async def test_a_valid_call_applies(redis_client: aioredis.Redis, script: str) -> None:
    """The calls the garbage test mutates are valid, so it tests refusals of bad input."""
    await market_with_funds(redis_client)
    call = valid_call(script)
    reply = await redis_client.register_script(ledger_script_source(script))(keys=call.keys, args=call.args)
    assert reply[0] == b"ok"


# --- every key through KEYS --------------------------------------------------------------------
async def written_keys(redis: aioredis.Redis, script: str, call: ScriptCall) -> set[str]:
    """The keys the script writes, from keyspace notifications."""
    await redis.config_set("notify-keyspace-events", "KA")
    pubsub = redis.pubsub()
    try:
        await pubsub.psubscribe("__keyspace@0__:*")
        await pubsub.get_message(timeout=1)
        await redis.register_script(ledger_script_source(script))(keys=call.keys, args=call.args)
        found: set[str] = set()
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)) is not None:
            found.add(message["channel"].decode().split(":", 1)[1])
        return found
    finally:
        await pubsub.aclose()
        await redis.config_set("notify-keyspace-events", "")


@pytest.mark.parametrize("script", SCRIPTS)
async def test_every_written_key_is_declared(redis_client: aioredis.Redis, script: str) -> None:
    """Every key a script writes is in its KEYS (settle used to spell "order:" and "open:"),
    except the `order:<id>` that enqueue creates from the id it assigns."""
    await market_with_funds(redis_client)
    call = valid_call(script)
    written = await written_keys(redis_client, script, call)
    assert written, "no keyspace notification arrived"
    undeclared = written - set(call.keys)
    first_id = keys.USER_BUCKETS + keys.user_bucket("1")
    assert undeclared == ({keys.order_key(first_id)} if script == "enqueue_order.lua" else set())
    assert {key_slot(k) for k in written} == {key_slot(call.keys[0])}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_keeps_to_one_hash_slot(script: str) -> None:
    """issue 16: on a Redis Cluster a script may touch the keys of one slot only; every
    call the ledger builds declares keys of exactly one slot (the bucket's or market's)."""
    call = valid_call(script)
    assert len({key_slot(k) for k in call.keys}) == 1, call.keys


def test_a_batch_settles_in_the_market_slot_then_one_call_per_bucket() -> None:
    """issue 16: the batch's balances and orders are split by ledger bucket (the fee
    account has its own); step A journals exactly those bucket calls."""
    plan = valid_plan()
    assert {tag for tag, _ in plan.buckets} == {keys.user_tag("1"), keys.user_tag("2"), keys.FEE_TAG}
    assert key_slot(plan.market.keys[0]) == key_slot(keys.commands_stream(SYMBOL))
    for tag, call in plan.buckets:
        assert {key_slot(k) for k in call.keys} == {key_slot(f"{{{tag}}}")}


# --- defect 6: the lock envelope; defect 7: subscribed users -----------------------------------
async def test_enqueue_entry_carries_the_lock_envelope(redis_client: aioredis.Redis) -> None:
    """issue 11 defect 6: an entry whose command cannot be decoded still says whose funds
    it locked, in which asset, and how many units."""
    ledger = Ledger(redis_client)
    await redis_client.hset(keys.balance_key("9"), "SOL:available", str(INT64_MAX + 10))
    placed = await ledger.place(symbol=SYMBOL, user_id="9", lock_asset="SOL",
                                lock_units=INT64_MAX + 1, command_json="not json",
                                record_tail_json="}", client_order_id=None)
    [(outbox_id, _)] = await redis_client.xrange(keys.outbox_stream(keys.user_tag("9")))
    assert placed.outbox_id == outbox_id.decode()
    [(_stream_id, entry)] = await redis_client.xrange(keys.commands_stream(SYMBOL))
    assert {k.decode(): v.decode() for k, v in entry.items()} == {
        ENTRY_ORDER_ID: str(placed.order_id), ENTRY_USER: "9", ENTRY_LOCK_ASSET: "SOL",
        ENTRY_LOCK_UNITS: str(INT64_MAX + 1), ENTRY_COMMAND: "not json", ENTRY_OUTBOX: placed.outbox_id}
    assert await ledger.balances("9") == {"SOL": {"available": 9, "locked": INT64_MAX + 1}}


async def test_settle_returns_the_users_subscribed_now(redis_client: aioredis.Redis) -> None:
    """issue 11 defect 7: the script answers which of the batch's users have a private
    subscription live at `now_ms`, read in the same atomic step as the settlement."""
    ledger = Ledger(redis_client)
    await market_with_funds(redis_client)
    for user, expiry in {"1": 1000, "2": 999, "3": 5000}.items():
        await redis_client.zadd(keys.subscribers_key(keys.user_tag(user)), {user: expiry})
    res = await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=1, last_seq=1, batch_json="",
                              balances=[], orders=[], notify_users=["1", "2", "4", "1"], now_ms=1000)
    assert res == SettleResult("ok", subscribed=frozenset({"1"}))
    plain = await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=2, last_seq=2, batch_json="",
                                balances=[BalanceChange("1", "USDC", -1, 1)], orders=[])
    assert plain == SettleResult("ok")  # the engine's kwargs of before still work
    refused = await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=2, last_seq=2, batch_json="",
                                  balances=[], orders=[], notify_users=["1"], now_ms=1000)
    assert refused.status == "duplicate" and refused.subscribed == frozenset()


async def test_settle_writes_and_publishes_market_data_only_when_applied(
        redis_client: aioredis.Redis) -> None:
    """issue 12: the batch's market data goes in the settle call (one round trip). It is
    written and published after the settle writes, only on "ok", in order; private messages
    only to users whose subscription is live; a refused (duplicate) call publishes nothing."""
    ledger = Ledger(redis_client)
    await market_with_funds(redis_client)
    for user, expiry in {"1": 1000, "2": 999}.items():
        await redis_client.zadd(keys.subscribers_key(keys.user_tag(user)), {user: expiry})
    pubsub = redis_client.pubsub()
    await pubsub.psubscribe("*")
    await pubsub.get_message(timeout=1)

    async def received() -> list[tuple[str, str]]:
        out = []
        while (m := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)) is not None:
            out.append((m["channel"].decode(), m["data"].decode()))
        return out

    try:
        res = await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=1, last_seq=1, batch_json="",
                                  balances=[], orders=[], notify_users=["1", "2"], now_ms=1000,
                                  market_data=MARKET_DATA, user_messages=USER_MESSAGES, outbox_acks=[("1", "5-0")])
        assert res == SettleResult("ok", subscribed=frozenset({"1"}))
        assert await received() == [("reply:a", "[1]"), (keys.depth_channel(SYMBOL), "{}"),
                                    (keys.user_channel("1"), "o1"), (keys.user_channel("1"), "f1")]
        book = await read_depth(redis_client, SYMBOL, 10)
        assert book == {"market": SYMBOL, "lastUpdateId": 2, "ts": 5, "bids": [["1.00", "5"], ["0.99", "1"]],
                        "asks": [["1.01", "2"]]}
        assert await redis_client.lrange(keys.recent_trades_key(SYMBOL), 0, -1) == [b'{"t":3}', b'{"t":2}']
        refused = await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=1, last_seq=1, batch_json="",
                                      balances=[], orders=[], now_ms=1000,
                                      market_data=MarketDataWrite(SYMBOL, depth_header="x", trades=["y"],
                                                                  depth_levels=[("b", 100, "")],
                                                                  publishes=[("reply:a", "z")]))
        assert refused.status == "duplicate"
        assert await received() == []
        assert await read_depth(redis_client, SYMBOL, 10) == book
        assert await redis_client.llen(keys.recent_trades_key(SYMBOL)) == 2
    finally:
        await pubsub.aclose()


async def test_the_stored_book_changes_level_by_level(redis_client: aioredis.Redis) -> None:
    """issue 12: a batch writes only its changed levels (a new total, or "" = gone) and the
    header; `depth_replace` drops the stored book first (after an engine restart)."""
    ledger = Ledger(redis_client)
    await redis_client.set(keys.engine_epoch_key(SYMBOL), "1")
    await redis_client.set(keys.engine_lease_key(SYMBOL), "1")

    async def settle(seq: int, levels: list[tuple[str, int, str]], replace: bool = False) -> None:
        header = f'{{"market":"{SYMBOL}","lastUpdateId":{seq},"ts":{seq}}}'
        res = await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=seq, last_seq=seq, batch_json="",
                                  balances=[], orders=[], market_data=MarketDataWrite(
                                      SYMBOL, depth_header=header, depth_levels=levels, depth_replace=replace))
        assert res.status == "ok"

    await settle(1, [("b", 100, "1.00 5"), ("b", 98, "0.98 1"), ("a", 103, "1.03 2"), ("a", 101, "1.01 4")])
    await settle(2, [("b", 100, ""), ("b", 99, "0.99 7"), ("a", 101, "1.01 1")])
    book = await read_depth(redis_client, SYMBOL, 10)
    assert book is not None and book["lastUpdateId"] == 2
    assert (book["bids"], book["asks"]) == ([["0.99", "7"], ["0.98", "1"]], [["1.01", "1"], ["1.03", "2"]])
    top = await read_depth(redis_client, SYMBOL, 1)
    assert top is not None and (top["bids"], top["asks"]) == ([["0.99", "7"]], [["1.01", "1"]])
    await settle(3, [("a", 105, "1.05 3")], replace=True)
    book = await read_depth(redis_client, SYMBOL, 10)
    assert book is not None and (book["bids"], book["asks"]) == ([], [["1.05", "3"]])
    # the tests' stand-in for the engine stores a book that reads back the same
    await store_book(redis_client, "BTC/USDC", 3, [["0.98", "1"], ["0.99", "7"]], [["1.01", "1"]], ts_ms=3)
    stored = await read_depth(redis_client, "BTC/USDC", 10)
    assert stored == {"market": "BTC/USDC", "lastUpdateId": 3, "ts": 3, "bids": [["0.99", "7"], ["0.98", "1"]],
                      "asks": [["1.01", "1"]]}
    assert await read_depth(redis_client, "ETH/USDC", 10) is None  # nothing stored yet


async def test_settle_pushes_more_recent_trades_than_one_unpack(redis_client: aioredis.Redis) -> None:
    """Trades are pushed in chunks (Lua's unpack has a stack limit), still in order."""
    ledger = Ledger(redis_client)
    await market_with_funds(redis_client)
    trades = [str(i) for i in range(1, 1201)]
    res = await ledger.settle(symbol=SYMBOL, epoch=1, first_seq=1, last_seq=1, batch_json="",
                              balances=[], orders=[], market_data=MarketDataWrite(
                                  SYMBOL, recent_keep=1000, trades=trades))  # type: ignore[arg-type]
    assert res.status == "ok"
    stored = await redis_client.lrange(keys.recent_trades_key(SYMBOL), 0, -1)
    assert [int(x) for x in stored] == list(range(1200, 200, -1))


# --- corrupt data and the lease ----------------------------------------------------------------
async def test_corrupt_stored_amount_raises_and_writes_nothing(redis_client: aioredis.Redis) -> None:
    """A stored amount the ledger never writes ("-0", a float) is refused, not computed on."""
    ledger = Ledger(redis_client)
    await redis_client.hset(keys.balance_key("1"), "USDC:available", "12.5")
    before = await snapshot(redis_client)
    with pytest.raises(LedgerScriptError) as caught:
        await ledger.move_funds(kind="deposit", user_id="1", asset="USDC", units=1, tx_id="t", record={})
    assert caught.value.status == "corrupt"
    assert caught.value.detail == (keys.balance_key("1"), "USDC:available")
    assert await snapshot(redis_client) == before


@pytest.mark.parametrize("ttl", ["", "0", "-5", "1.5", "abc", "12345678901234"])
async def test_lease_refuses_a_malformed_ttl_before_any_write(redis_client: aioredis.Redis, ttl: str) -> None:
    """issue 11 defect 2: acquire used to INCR the epoch and then fail on SET PX, leaving a
    new epoch without a lease."""
    lease = redis_client.register_script(lua_source("lease.lua"))
    await redis_client.set(keys.engine_epoch_key(SYMBOL), 4)
    before = await snapshot(redis_client)
    with pytest.raises(ResponseError):
        await lease(keys=[keys.engine_epoch_key(SYMBOL), keys.engine_lease_key(SYMBOL)],
                    args=["acquire", "0", ttl])
    assert await snapshot(redis_client) == before
    assert await lease(keys=[keys.engine_epoch_key(SYMBOL), keys.engine_lease_key(SYMBOL)],
                       args=["acquire", "0", "1000"]) == 5


def test_scripts_never_use_hincrby() -> None:
    """No amount goes through HINCRBY (signed 64-bit) any more."""
    for name in (*SCRIPTS, "lib_decimal.lua"):
        assert "HINCRBY" not in lua_source(name).upper()

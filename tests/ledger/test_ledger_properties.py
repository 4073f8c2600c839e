"""Issue 11 defect 2: property tests of every ledger script against a real Redis.

Amounts are drawn near the limits that used to matter (2**53, 10**15, 2**63) and beyond,
stored values are sometimes missing or malformed, and results are often negative. The
model is Python's exact int arithmetic. After every reply but "ok" (and after any error)
every key in Redis is byte-for-byte what it was (DUMP); after "ok" each amount equals the
model and conservation holds.
"""

from __future__ import annotations

import os
import re

import orjson
import redis.asyncio as aioredis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cryptex_common import keys
from cryptex_common.ledger import (
    BalanceChange,
    Ledger,
    LedgerScriptError,
    OrderWrite,
    ScriptCall,
    SettleResult,
    ledger_script_source,
    settle_plan,
    settle_result,
)

SYMBOL = "SOL/USDC"
INT64_MAX = 2**63 - 1
EDGES = (0, 1, 2**53 - 1, 2**53, 10**15 - 1, 10**15, INT64_MAX - 1, INT64_MAX, INT64_MAX + 1,
         2**64, 10**40)
MALFORMED = ("", "-0", "007", "+1", "1e3", " 1", "1.5", "abc", "-1", "12345678901234567890x")
NATURAL = re.compile(r"0|[1-9][0-9]*")
# LEDGER_PROPERTY_EXAMPLES=2000 for a long local soak; the default keeps the suite fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("LEDGER_PROPERTY_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

naturals = st.one_of(
    st.sampled_from(EDGES),
    st.builds(lambda edge, d: max(0, edge + d), st.sampled_from(EDGES), st.integers(-300, 300)),
    st.integers(0, 2**80),
)
positives = naturals.map(lambda n: max(n, 1))
deltas = st.builds(lambda n, negative: -n if negative else n, naturals, st.booleans())
# a stored amount: mostly canonical, sometimes absent or not something the ledger writes
stored_amounts = st.one_of(naturals.map(str), naturals.map(str), st.none(), st.sampled_from(MALFORMED))


def is_natural(stored: str | None) -> bool:
    return stored is None or NATURAL.fullmatch(stored) is not None


def value(stored: str | None) -> int:
    return 0 if stored is None else int(stored)


async def snapshot(redis: aioredis.Redis) -> dict[bytes, tuple[bytes, bool]]:
    """Every key: (DUMP bytes, has a TTL)."""
    return {key: (await redis.dump(key), await redis.pttl(key) >= 0) for key in await redis.keys("*")}


async def hset_stored(redis: aioredis.Redis, key: str, field: str, stored: str | None) -> None:
    if stored is not None:
        await redis.hset(key, field, stored)


async def field_int(redis: aioredis.Redis, key: str, field: str) -> int:
    raw = await redis.hget(key, field)
    return 0 if raw is None else int(raw)


# --- move_funds.lua ----------------------------------------------------------------------------
def move_model(kind: str, available: str | None, total: str | None, units: int, tx_seen: bool) -> str:
    if tx_seen:
        return "dup"
    if not is_natural(available) or not is_natural(total):
        return "corrupt"
    if kind == "withdraw" and units > value(available):
        return "insufficient"
    return "ok"


@SETTINGS
@given(kind=st.sampled_from(["deposit", "withdraw"]), available=stored_amounts,
       withdrawals=naturals, total=st.one_of(st.none(), st.sampled_from(MALFORMED)),
       units=positives, tx_seen=st.sampled_from([False, False, True]))
async def test_move_funds_is_exact_or_writes_nothing(
    redis_client: aioredis.Redis, kind: str, available: str | None, withdrawals: int,
    total: str | None, units: int, tx_seen: bool,
) -> None:
    """issue 11 defect 2: deposits and withdrawals near and past int64, negative results."""
    await redis_client.flushdb()
    ledger = Ledger(redis_client)
    balance, field = keys.balance_key("u"), keys.available_field("USDC")
    await hset_stored(redis_client, balance, field, available)
    deposits = (value(available) if is_natural(available) else 0) + withdrawals
    totals = keys.totals_key(keys.user_tag("u"))
    await redis_client.hset(totals, mapping={"USDC:deposits": deposits, "USDC:withdrawals": withdrawals})
    totals_field = f"USDC:{'deposits' if kind == 'deposit' else 'withdrawals'}"
    await hset_stored(redis_client, totals, totals_field, total)  # a malformed total
    if tx_seen:
        await redis_client.set(keys.tx_key("u", "t"), '{"tx":"old"}')
    expected = move_model(kind, available, total, units, tx_seen)
    before = await snapshot(redis_client)
    try:
        status, stored = await ledger.move_funds(kind=kind, user_id="u", asset="USDC", units=units,
                                                 tx_id="t", record={"tx": "t"})
    except LedgerScriptError as exc:
        status, stored = exc.status, None
    assert status == expected
    event(status)
    if status != "ok":
        assert await snapshot(redis_client) == before
        assert stored == ({"tx": "old"} if status == "dup" else None)
        return
    sign = 1 if kind == "deposit" else -1
    assert await field_int(redis_client, balance, field) == value(available) + sign * units
    assert await field_int(redis_client, totals, totals_field) == (
        deposits if kind == "deposit" else withdrawals) + units
    assert orjson.loads(await redis_client.get(keys.tx_key("u", "t"))) == {"tx": "t"}
    row = (await ledger.conservation_report())["USDC"]
    assert row["held"] == row["deposits"] - row["withdrawals"]


# --- enqueue_order.lua -------------------------------------------------------------------------
def enqueue_model(available: str | None, locked: str | None, units: int, counter: str | None,
                  coid_seen: bool, stream_ok: bool) -> str:
    if coid_seen:
        return "dup"
    if not is_natural(available) or not is_natural(locked):
        return "corrupt"
    if units > value(available):
        return "insufficient"
    if not is_natural(counter) or len(counter or "") > 12 or not stream_ok:
        return "corrupt"
    return "ok"


@SETTINGS
@given(available=stored_amounts, locked=stored_amounts, units=positives,
       counter=st.one_of(st.none(), st.sampled_from(["0", "41", "999999999999", "1000000000000",
                                                     "abc", "-3"])),
       coid_seen=st.sampled_from([False, False, True]), stream_ok=st.sampled_from([True, True, False]))
async def test_enqueue_is_exact_or_writes_nothing(
    redis_client: aioredis.Redis, available: str | None, locked: str | None, units: int,
    counter: str | None, coid_seen: bool, stream_ok: bool,
) -> None:
    """issue 11 defect 2: locks near and past int64, short funds, corrupt counters and keys."""
    await redis_client.flushdb()
    ledger = Ledger(redis_client)
    balance = keys.balance_key("u")
    await hset_stored(redis_client, balance, "USDC:available", available)
    await hset_stored(redis_client, balance, "USDC:locked", locked)
    if counter is not None:
        await redis_client.set(keys.order_id_counter(keys.user_bucket("u")), counter)
    if coid_seen:
        await redis_client.set(keys.client_order_key("u", "c1"), "77")
    if not stream_ok:
        await redis_client.set(keys.outbox_stream(keys.user_tag("u")), "not a stream")
    expected = enqueue_model(available, locked, units, counter, coid_seen, stream_ok)
    before = await snapshot(redis_client)
    try:
        result = await ledger.enqueue_order(
            symbol=SYMBOL, user_id="u", lock_asset="USDC", lock_units=units, command_json="{}",
            record_tail_json='"status":"new"}', client_order_id="c1")
        status = result.status
    except LedgerScriptError as exc:
        status = exc.status
    assert status == expected
    event(status)
    if status != "ok":
        assert await snapshot(redis_client) == before
        return
    order_id = (value(counter) + 1) * keys.USER_BUCKETS + keys.user_bucket("u")
    assert result.order_id == order_id
    assert await field_int(redis_client, balance, "USDC:available") == value(available) - units
    assert await field_int(redis_client, balance, "USDC:locked") == value(locked) + units
    [(_sid, entry)] = await redis_client.xrange(keys.outbox_stream(keys.user_tag("u")))
    assert entry == {b"id": str(order_id).encode(), b"u": b"u", b"a": b"USDC",
                     b"l": str(units).encode(), b"c": b"{}", b"m": SYMBOL.encode()}
    assert await redis_client.zscore(keys.open_orders_key("u"), str(order_id)) == order_id
    assert await redis_client.get(keys.client_order_key("u", "c1")) == str(order_id).encode()


# --- settle_market.lua, then settle_bucket.lua per bucket ---------------------------------------
USERS = ("1", "2", keys.FEE_ACCOUNT)  # three ledger tags: buckets 1 and 2, and the fee account's
FIELDS = [(keys.balance_key(u), f"USDC:{kind}") for u in USERS for kind in ("available", "locked")]
changes_st = st.lists(st.tuples(st.sampled_from(USERS), deltas, deltas), max_size=5)
orders_st = st.lists(st.tuples(st.integers(1, 4), st.sampled_from(USERS[:2]), st.booleans()),
                     max_size=3, unique_by=lambda o: o[0])


def market_model(fence: str, settled: int, first: int, last: int) -> str:
    """Step A's status: it checks the fence and the sequence, never a balance."""
    if fence != "own":
        return "fenced"
    if last <= settled:
        return "duplicate"
    return "gap" if first != settled + 1 else "ok"


def bucket_model(stored: list[str | None], changes: list[tuple[str, int, int]],
                 user: str) -> tuple[str, dict[tuple[str, str], int]]:
    """(status, new value per touched field) of the bucket call of `user`'s bucket."""
    current = dict(zip(FIELDS, stored, strict=True))
    net: dict[tuple[str, str], int] = {}
    for who, available, locked in changes:
        for kind, delta in (("available", available), ("locked", locked)):
            if delta and who == user:
                slot = (keys.balance_key(who), f"USDC:{kind}")
                net[slot] = net.get(slot, 0) + delta
    touched = {slot: delta for slot, delta in net.items() if delta}
    if any(not is_natural(current[slot]) for slot in touched):
        return "corrupt", {}
    after = {slot: value(current[slot]) + delta for slot, delta in touched.items()}
    negative = [slot for slot, amount in after.items() if amount < 0]
    return ("negative", {negative[0]: 0}) if negative else ("ok", after)


def order_id_of(n: int, user: str) -> int:
    return n * keys.USER_BUCKETS + keys.user_bucket(user)


async def settle_state(redis: aioredis.Redis, stored: list[str | None], fence: str, settled: int,
                       orders: list[tuple[int, str, bool]], now_ms: int) -> None:
    for (key, field), raw in zip(FIELDS, stored, strict=True):
        await hset_stored(redis, key, field, raw)
    await redis.set(keys.engine_epoch_key(SYMBOL), 3 if fence != "stale" else 4)
    if fence != "lapsed":
        await redis.set(keys.engine_lease_key(SYMBOL), 3 if fence != "stale" else 4)
    if settled:
        await redis.set(keys.settled_seq_key(SYMBOL), settled)
    for n, user, _terminal in orders:
        order_id = order_id_of(n, user)
        await redis.hset(keys.order_key(order_id), mapping={"r": "old", "u": user})
        await redis.zadd(keys.open_orders_key(user), {str(order_id): order_id})
    for user, expiry in {"1": now_ms + 1, "2": now_ms - 1, keys.FEE_ACCOUNT: now_ms}.items():
        await redis.zadd(keys.subscribers_key(keys.user_tag(user)), {user: expiry})


async def tag_snapshot(redis: aioredis.Redis, tag: str) -> dict[bytes, tuple[bytes, bool]]:
    return {k: v for k, v in (await snapshot(redis)).items() if f"{{{tag}}}".encode() in k}


async def run_bucket(redis: aioredis.Redis, call: ScriptCall) -> SettleResult:
    script = redis.register_script(ledger_script_source("settle_bucket.lua"))
    try:
        return settle_result(await script(keys=call.keys, args=call.args))
    except LedgerScriptError as exc:
        return SettleResult(exc.status, exc.detail)


@SETTINGS
@given(stored=st.lists(stored_amounts, min_size=len(FIELDS), max_size=len(FIELDS)), changes=changes_st,
       orders=orders_st, fence=st.sampled_from(["own"] * 4 + ["stale", "lapsed"]),
       settled=st.integers(0, 3), seq=st.sampled_from(["next"] * 4 + ["replay", "gap"]))
async def test_settle_is_exact_or_writes_nothing(
    redis_client: aioredis.Redis, stored: list[str | None], changes: list[tuple[str, int, int]],
    orders: list[tuple[int, str, bool]], fence: str, settled: int, seq: str,
) -> None:
    """issue 11 defect 2, issue 16: step A records a batch whole or not at all; then each
    bucket call applies its part exactly (deltas near and past int64) or, refused, leaves
    its bucket as it was; a second run of any bucket call changes nothing."""
    await redis_client.flushdb()
    now_ms = 1_700_000_000_000
    await settle_state(redis_client, stored, fence, settled, orders, now_ms)
    first = {"next": settled + 1, "replay": max(settled, 1), "gap": settled + 2}[seq]
    last = first if seq == "replay" else first + 1
    plan = settle_plan(
        symbol=SYMBOL, epoch=3, first_seq=first, last_seq=last, batch_json='{"b":1}',
        balances=[BalanceChange(u, "USDC", a, lk) for u, a, lk in changes],
        orders=[OrderWrite(order_id_of(n, u), u, f'{{"o":{n}}}', t) for n, u, t in orders],
        notify_users=list(USERS), now_ms=now_ms)
    before = await snapshot(redis_client)
    status = (await Ledger(redis_client).run_market(plan.market)).status
    assert status == market_model(fence, settled, first, last)
    event(status)
    if status != "ok":
        assert await snapshot(redis_client) == before
        return
    assert await redis_client.get(keys.settled_seq_key(SYMBOL)) == str(last).encode()
    assert await redis_client.xlen(keys.events_stream(SYMBOL)) == 1
    [(_entry, journaled)] = await redis_client.xrange(keys.journal_stream(SYMBOL))
    assert {k.decode() for k in journaled} == {tag for tag, _ in plan.buckets}
    for tag, call in plan.buckets:
        [user] = [u for u in USERS if keys.user_tag(u) == tag]
        expected, after = bucket_model(stored, changes, user)
        bucket_before = await tag_snapshot(redis_client, tag)
        result = await run_bucket(redis_client, call)
        assert result.status == expected
        event(f"bucket {expected}")
        if expected != "ok":
            assert await tag_snapshot(redis_client, tag) == bucket_before
            if expected == "negative":
                assert tuple(result.detail) == next(iter(after))
            continue
        for (key, field), raw in zip(FIELDS, stored, strict=True):
            want, got = after.get((key, field)), await redis_client.hget(key, field)
            if key == keys.balance_key(user):
                assert got == (None if raw is None else raw.encode()) if want is None else got == str(want).encode()
        assert result.subscribed == ({user} if user in ("1", keys.FEE_ACCOUNT) else set())
        for n, owner, terminal in orders:
            if owner == user:
                order_id = order_id_of(n, owner)
                assert await redis_client.hget(keys.order_key(order_id), "r") == f'{{"o":{n}}}'.encode()
                open_score = await redis_client.zscore(keys.open_orders_key(owner), str(order_id))
                assert (open_score is None) == terminal
        applied_once = await snapshot(redis_client)
        assert (await run_bucket(redis_client, call)).status == "applied"
        assert await snapshot(redis_client) == applied_once

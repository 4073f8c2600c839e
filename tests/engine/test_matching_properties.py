"""Property tests: the engine against the naive reference book, plus its invariants.

Random command sequences (a few users, a narrow price range, every order type, TIF, STP mode,
post-only, over- and under-locked orders, cancels, market-state changes) must give the same
fills, order statuses, balances and book as `tests/support/reference_book.py`, conserve every
asset, never leave the book crossed, keep FIFO per level, and survive snapshot/restore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import MarketRules, MarketState, SelfTradePrevention
from cryptex_common.messages import OrderType, Side, TimeInForce
from cryptex_engine.domain.commands import (
    CancelAll,
    CancelOrder,
    CommandResult,
    Configure,
    PlaceOrder,
)
from cryptex_engine.domain.matching import MatchingEngine
from tests.engine.helpers import Ledger, delta_sums
from tests.support.reference_book import ReferenceBook

RULES = MarketRules(
    symbol="SOL/USDC",
    base_asset="SOL",
    quote_asset="USDC",
    base_units_per_lot=10,
    quote_units_per_tick_lot=3,
    min_quantity_lots=1,
    max_quantity_lots=6,
    min_notional_units=290,  # a 1-lot limit below 97 ticks is too small
)
USERS = ("u0", "u1", "u2")
PRICES = st.integers(min_value=97, max_value=102)
STPS = st.sampled_from([None, *SelfTradePrevention])
# ENGINE_PROPERTY_EXAMPLES=5000 for a long local soak; the default keeps the suite fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("ENGINE_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- command intents -> commands --------------------------------------------------------------
limit_intent = st.tuples(
    st.just("limit"),
    st.sampled_from(USERS),
    st.sampled_from(Side),
    PRICES,
    st.sampled_from([1, 2, 3, 4, 5, 6] * 4 + [0, 7]),  # 0 and 7 are off the quantity rules
    st.sampled_from([TimeInForce.GTC] * 3 + [TimeInForce.IOC, TimeInForce.FOK]),
    st.sampled_from([False, False, False, True]),
    STPS,
    st.sampled_from([0] * 8 + [-1, 50]),  # lock adjustment: exact, short, over
)
market_intent = st.tuples(
    st.just("market"),
    st.sampled_from(USERS),
    st.sampled_from(Side),
    st.one_of(st.none(), st.integers(min_value=1, max_value=7)),
    st.one_of(st.none(), st.integers(min_value=1, max_value=2500), st.sampled_from([1, 2, 291, 300])),
    st.sampled_from([TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTC]),
    STPS,
    st.integers(min_value=0, max_value=2500),
)
cancel_intent = st.tuples(st.just("cancel"), st.sampled_from(USERS), st.integers(0, 50))
cancel_all_intent = st.tuples(st.just("cancel_all"), st.sampled_from(USERS))
configure_intent = st.tuples(
    st.just("configure"),
    st.sampled_from([MarketState.OPEN] * 8 + [s for s in MarketState if s != MarketState.OPEN]),
    st.sampled_from([0, 1, 10, 25, 1000]),
    st.sampled_from([0, 1, 10, 25, 1000]),
)
_BY_KIND = {
    "limit": limit_intent,
    "market": market_intent,
    "cancel": cancel_intent,
    "cancel_all": cancel_all_intent,
    "configure": configure_intent,
}
# Weighted so that books fill up and trade: mostly limits, some of everything else.
_KINDS = ["limit"] * 11 + ["market"] * 3 + ["cancel"] * 3 + ["cancel_all", "configure"]
intents = st.lists(st.sampled_from(_KINDS).flatmap(_BY_KIND.__getitem__), min_size=1, max_size=60)


def build_commands(raw: list[tuple]) -> list:
    """Turn intents into commands. Order ids grow from 1; cancels pick an issued id."""
    commands: list = [Configure(MarketState.OPEN, 10, 20)]
    issued: list[int] = []
    for intent in raw:
        kind = intent[0]
        oid = len(issued) + 1
        if kind == "limit":
            _, user, side, price, qty, tif, post_only, stp, adj = intent
            need = RULES.notional_units(price, qty) if side == Side.BUY else RULES.base_units(qty)
            commands.append(
                PlaceOrder(
                    oid,
                    user,
                    side,
                    OrderType.LIMIT,
                    tif,
                    post_only,
                    price,
                    qty,
                    None,
                    stp,
                    max(0, need + adj),
                )
            )
            issued.append(oid)
        elif kind == "market":
            _, user, side, qty, budget, tif, stp, lock = intent
            if side == Side.SELL:
                qty = qty or 1
                budget = None
                lock = RULES.base_units(qty)
            elif budget is not None:
                lock = budget + (lock % 3)  # the cap is the budget; sometimes over-locked
            commands.append(PlaceOrder(oid, user, side, OrderType.MARKET, tif, False, None, qty, budget, stp, lock))
            issued.append(oid)
        elif kind == "cancel":
            _, user, pick = intent
            target = issued[pick % len(issued)] if issued and pick < 45 else 10_000 + pick
            commands.append(CancelOrder(target, user))
        elif kind == "cancel_all":
            commands.append(CancelAll(intent[1]))
        else:
            _, state, maker_bps, taker_bps = intent
            commands.append(Configure(state, maker_bps, taker_bps))
    return commands


# --- helpers ------------------------------------------------------------------------------
def ref_apply(ref: ReferenceBook, cmd) -> object:
    if isinstance(cmd, Configure):
        return ref.configure(cmd.state.value, cmd.maker_fee_bps, cmd.taker_fee_bps)
    if isinstance(cmd, CancelOrder):
        return ref.cancel(cmd.order_id, cmd.user_id)
    if isinstance(cmd, CancelAll):
        return ref.cancel_all(cmd.user_id)
    return ref.place(
        {
            "order_id": cmd.order_id,
            "user_id": cmd.user_id,
            "side": cmd.side.value,
            "order_type": cmd.order_type.value,
            "time_in_force": cmd.time_in_force.value,
            "post_only": cmd.post_only,
            "price_ticks": cmd.price_ticks,
            "quantity_lots": cmd.quantity_lots,
            "quote_budget_units": cmd.quote_budget_units,
            "stp": cmd.stp.value if cmd.stp else None,
            "locked_units": cmd.locked_units,
        }
    )


def engine_book(eng: MatchingEngine) -> list[tuple[str, int, list[tuple[int, int]]]]:
    out = []
    for side in (eng.book.bids, eng.book.asks):
        for level in side.levels_best_first():
            queue = [(o.order_id, o.remaining_lots) for o in level.orders.values()]
            out.append(("buy" if side.is_buy else "sell", level.price_ticks, queue))
    return out


def level_totals(eng: MatchingEngine) -> dict[tuple[Side, int], int]:
    bids, asks = eng.depth(10**9)
    return {**{(Side.BUY, p): q for p, q in bids}, **{(Side.SELL, p): q for p, q in asks}}


def run(commands: list, engine: MatchingEngine | None = None) -> list[CommandResult]:
    eng = engine or MatchingEngine(RULES, FEE_ACCOUNT)
    return [eng.apply(cmd, 1000 + i) for i, cmd in enumerate(commands)]


# --- properties ---------------------------------------------------------------------------
@SETTINGS
@given(intents)
def test_engine_matches_the_naive_reference_book(raw):
    commands = build_commands(raw)
    eng, ref = MatchingEngine(RULES, FEE_ACCOUNT), ReferenceBook(RULES)
    ledger = Ledger()
    for user in USERS:
        for asset in ("SOL", "USDC"):
            ledger.deposit(user, asset, 10**6)
            ref.deposit(user, asset, 10**6)
    for i, cmd in enumerate(commands):
        if isinstance(cmd, PlaceOrder):  # what the API does before enqueueing
            asset = "USDC" if cmd.side == Side.BUY else "SOL"
            ledger.api_lock(cmd.user_id, asset, cmd.locked_units)
            ref.api_lock(cmd.user_id, asset, cmd.locked_units)
        before = level_totals(eng)
        got = eng.apply(cmd, 1000 + i)
        want = ref_apply(ref, cmd)
        ledger.apply(got)
        where = f"command {i}: {cmd}"

        assert got.seq == i + 1, where
        assert (got.accepted, got.reject_reason) == (want.accepted, want.reject_reason), where
        assert [
            (
                f.trade_id,
                f.price_ticks,
                f.quantity_lots,
                f.taker_order_id,
                f.maker_order_id,
                f.taker_user_id,
                f.maker_user_id,
                f.buyer_fee_units,
                f.seller_fee_units,
            )
            for f in got.fills
        ] == [
            (
                f.trade_id,
                f.price,
                f.quantity,
                f.taker_order_id,
                f.maker_order_id,
                f.taker_user_id,
                f.maker_user_id,
                f.buyer_fee,
                f.seller_fee,
            )
            for f in want.fills
        ], where
        got_orders = {
            u.order_id: (
                u.status.value,
                u.executed_lots,
                u.executed_quote_units,
                u.remaining_lots,
                u.reason,
            )
            for u in got.updates
        }
        assert len(got_orders) == len(got.updates), f"an order updated twice: {where}"
        assert got_orders == want.orders, where
        if isinstance(cmd, PlaceOrder):
            assert got.order is not None and got.order.order_id == cmd.order_id
            assert got.updates[0] is got.order
        assert ledger.view() == {k: (v[0], v[1]) for k, v in sorted(ref.balances.items()) if v != [0, 0]}, where
        assert engine_book(eng) == ref.book_view(), where

        # conservation of every asset in every command
        assert all(total == 0 for total in delta_sums(got).values()), where
        # the book at rest is never crossed
        bid, ask = eng.best_bid(), eng.best_ask()
        assert bid is None or ask is None or bid < ask, where
        # depth_changes name exactly the levels that changed, with their new totals
        after = level_totals(eng)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        reported = {(side, price): lots for side, price, lots in got.depth_changes}
        assert len(reported) == len(got.depth_changes), where
        assert changed <= reported.keys(), where
        assert all(after.get(k, 0) == lots for k, lots in reported.items()), where
        assert eng.last_trade_id == ref.last_trade_id

    # FIFO per level: order ids grow with arrival, so each queue must be ascending by id;
    # every level's total is the sum of its orders; the indexes agree with the levels.
    resting = 0
    for _, _, queue in engine_book(eng):
        ids = [oid for oid, _ in queue]
        assert ids == sorted(ids)
        resting += len(ids)
    for side in (eng.book.bids, eng.book.asks):
        for level in side.levels.values():
            assert level.orders and level.total_lots == sum(o.remaining_lots for o in level.orders.values())
    assert resting == eng.open_orders_count() == sum(len(m) for m in eng.book.by_user.values())
    # what is still locked in the ledger is exactly what resting orders still lock
    locked = {"USDC": 0, "SOL": 0}
    for o in eng.book.orders.values():
        locked["USDC" if o.is_buy else "SOL"] += o.locked_remaining
    for asset in ("USDC", "SOL"):
        assert locked[asset] == sum(v[1] for (user, a), v in ledger.balances.items() if a == asset)


@SETTINGS
@given(intents, st.integers(min_value=0, max_value=60))
def test_snapshot_restore_continue_equals_no_snapshot(raw, cut):
    commands = build_commands(raw)
    cut = min(cut, len(commands))
    straight = MatchingEngine(RULES, FEE_ACCOUNT)
    results = run(commands, straight)

    first = MatchingEngine(RULES, FEE_ACCOUNT)
    run(commands[:cut], first)
    snap = json.loads(json.dumps(first.snapshot()))  # must survive a JSON round trip
    resumed = MatchingEngine.restore(RULES, snap, FEE_ACCOUNT)
    assert resumed.state_hash() == first.state_hash()
    tail = [resumed.apply(cmd, 1000 + cut + i) for i, cmd in enumerate(commands[cut:])]
    assert tail == results[cut:]
    assert resumed.state_hash() == straight.state_hash()
    assert resumed.snapshot() == straight.snapshot()


@SETTINGS
@given(intents)
def test_equal_histories_give_equal_results_and_state_hashes(raw):
    commands = build_commands(raw)
    a, b = MatchingEngine(RULES, FEE_ACCOUNT), MatchingEngine(RULES, FEE_ACCOUNT)
    assert run(commands, a) == run(commands, b)
    assert a.state_hash() == b.state_hash()


_HASH_SCRIPT = """
import hashlib, random, sys
sys.path.insert(0, sys.argv[1])
from tests.engine.test_matching_properties import FEE_ACCOUNT, RULES, build_commands, run
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_common.markets import MarketState, SelfTradePrevention
from cryptex_common.messages import Side, TimeInForce
rng = random.Random(7)
raw = []
for _ in range(3000):
    r = rng.random()
    user = rng.choice(["u0", "u1", "u2", "u3"])
    if r < 0.7:
        raw.append(("limit", user, rng.choice(list(Side)), rng.randint(95, 104),
                    rng.randint(1, 6), rng.choice(list(TimeInForce)), False,
                    rng.choice([None, *SelfTradePrevention]), 0))
    elif r < 0.8:
        raw.append(("market", user, rng.choice(list(Side)), rng.randint(1, 6), None,
                    TimeInForce.IOC, None, 5000))
    elif r < 0.97:
        raw.append(("cancel", user, rng.randint(0, 44)))
    else:
        raw.append(("cancel_all", user))
eng = MatchingEngine(RULES, FEE_ACCOUNT)
digest = hashlib.sha256(repr(run(build_commands(raw), eng)).encode()).hexdigest()
print(digest, eng.state_hash())
"""


def test_output_does_not_depend_on_the_hash_seed():
    root = Path(__file__).resolve().parents[2]
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT, str(root)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        outputs.add(proc.stdout.strip())
    assert len(outputs) == 1, outputs

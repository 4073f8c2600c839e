"""One test per engine rule, named as the rule it checks (DESIGN.md "Engine rules")."""

from __future__ import annotations

import json

from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import MarketRules, MarketState
from cryptex_common.markets import SelfTradePrevention as STP
from cryptex_common.messages import OrderStatus, Side
from cryptex_engine.domain.commands import (
    BalanceDelta,
    CancelAll,
    CancelOrder,
    Configure,
)
from cryptex_engine.domain.matching import MatchingEngine, fee_units
from tests.engine.helpers import (
    BUY,
    FOK,
    IOC,
    RULES,
    SELL,
    delta_sums,
    fills_of,
    limit,
    market,
    open_engine,
    statuses,
)


def deltas_of(result) -> dict[tuple[str, str], tuple[int, int]]:
    return {(d.user_id, d.asset): (d.available, d.locked) for d in result.balance_deltas}


# --- priority and prices -------------------------------------------------------------------
def test_best_price_trades_first():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 101, 1), 1)
    eng.apply(limit(2, "a", SELL, 100, 1), 1)
    r = eng.apply(limit(3, "b", BUY, 101, 1), 1)
    assert fills_of(r) == [(100, 1, 2, 3)]


def test_orders_at_one_price_fill_in_arrival_order():
    eng = open_engine()
    for oid in (1, 2, 3):
        eng.apply(limit(oid, f"m{oid}", SELL, 100, 2), 1)
    r = eng.apply(limit(9, "b", BUY, 100, 5), 1)
    assert fills_of(r) == [(100, 2, 1, 9), (100, 2, 2, 9), (100, 1, 3, 9)]
    assert eng.depth(5) == ([], [(100, 1)])


def test_trade_executes_at_the_makers_price():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 1), 1)
    r = eng.apply(limit(2, "b", BUY, 105, 1), 1)
    assert [f.price_ticks for f in r.fills] == [100]
    eng.apply(limit(3, "a", BUY, 90, 1), 1)
    r = eng.apply(limit(4, "b", SELL, 80, 1), 1)
    assert [f.price_ticks for f in r.fills] == [90]


def test_limit_order_does_not_trade_beyond_its_price():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 1), 1)
    eng.apply(limit(2, "a", SELL, 102, 1), 1)
    r = eng.apply(limit(3, "b", BUY, 101, 5), 1)
    assert fills_of(r) == [(100, 1, 1, 3)]
    assert r.order.status == OrderStatus.PARTIALLY_FILLED and r.order.remaining_lots == 4
    assert eng.best_bid() == 101 and eng.best_ask() == 102


# --- time in force ---------------------------------------------------------------------------
def test_gtc_limit_rests_its_remainder():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)
    r = eng.apply(limit(2, "b", BUY, 100, 5), 1)
    assert r.order.status == OrderStatus.PARTIALLY_FILLED
    assert eng.depth(5) == ([(100, 3)], [])
    assert eng.open_orders_count() == 1


def test_gtc_limit_that_does_not_cross_rests_as_new():
    eng = open_engine()
    r = eng.apply(limit(1, "a", BUY, 99, 2), 1)
    assert r.accepted and r.order.status == OrderStatus.NEW and r.order.remaining_lots == 2
    assert r.depth_changes == [(BUY, 99, 2)]
    assert r.balance_deltas == []  # the API already locked the funds


def test_ioc_fills_what_it_can_and_expires_the_rest():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)
    r = eng.apply(limit(2, "b", BUY, 100, 5, tif=IOC), 1)
    assert fills_of(r) == [(100, 2, 1, 2)]
    assert r.order.status == OrderStatus.EXPIRED and r.order.executed_lots == 2
    assert eng.open_orders_count() == 0


def test_fok_fills_completely_across_levels_when_the_book_can():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)
    eng.apply(limit(2, "a", SELL, 101, 2), 1)
    r = eng.apply(limit(3, "b", BUY, 101, 4, tif=FOK), 1)
    assert r.order.status == OrderStatus.FILLED
    assert fills_of(r) == [(100, 2, 1, 3), (101, 2, 2, 3)]


def test_fok_that_cannot_fill_completely_expires_with_no_trades():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)
    eng.apply(limit(2, "a", SELL, 102, 2), 1)
    before = eng.snapshot()
    r = eng.apply(limit(3, "b", BUY, 101, 3, tif=FOK), 1)
    assert r.accepted and r.fills == []
    assert r.order.status == OrderStatus.EXPIRED and r.order.reason == "FOK_NOT_FILLABLE"
    assert deltas_of(r) == {("b", "USDC"): (909, -909)}
    after = eng.snapshot()
    assert {**after, "seq": 0} == {**before, "seq": 0}


def test_fok_precheck_walks_past_own_orders_expired_by_expire_maker():
    eng = open_engine()
    eng.apply(limit(1, "b", SELL, 100, 5), 1)  # b's own order: would be expired
    eng.apply(limit(2, "a", SELL, 100, 2), 1)
    r = eng.apply(limit(3, "b", BUY, 100, 3, tif=FOK, stp=STP.EXPIRE_MAKER), 1)
    assert r.order.reason == "FOK_NOT_FILLABLE" and r.fills == []
    assert eng.open_orders_count() == 2  # nothing was expired either
    r = eng.apply(limit(4, "b", BUY, 100, 2, tif=FOK, stp=STP.EXPIRE_MAKER), 1)
    assert r.order.status == OrderStatus.FILLED and fills_of(r) == [(100, 2, 2, 4)]
    assert statuses(r)[1] == "expired"


def test_fok_precheck_fails_when_expire_taker_would_stop_the_walk():
    eng = open_engine()
    eng.apply(limit(1, "b", SELL, 100, 1), 1)
    eng.apply(limit(2, "a", SELL, 100, 5), 1)
    r = eng.apply(limit(3, "b", BUY, 100, 2, tif=FOK, stp=STP.EXPIRE_TAKER), 1)
    assert r.order.reason == "FOK_NOT_FILLABLE" and r.fills == []


def test_market_order_never_rests():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)
    r = eng.apply(market(2, "b", BUY, quantity_lots=5), 1)
    assert r.order.status == OrderStatus.EXPIRED and r.order.executed_lots == 2
    assert r.order.remaining_lots == 0 and eng.open_orders_count() == 0


def test_market_order_on_an_empty_book_expires_with_no_liquidity():
    eng = open_engine()
    r = eng.apply(market(1, "b", SELL, quantity_lots=1), 1)
    assert r.accepted and r.order.status == OrderStatus.EXPIRED
    assert r.order.reason == "NO_LIQUIDITY"
    assert deltas_of(r) == {("b", "SOL"): (10, -10)}


# --- post-only -------------------------------------------------------------------------------
def test_post_only_that_would_take_is_rejected_and_nothing_trades():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)
    r = eng.apply(limit(2, "b", BUY, 100, 1, post_only=True), 1)
    assert not r.accepted and r.reject_reason == "POST_ONLY_WOULD_TAKE"
    assert r.order.status == OrderStatus.REJECTED and r.fills == []
    assert deltas_of(r) == {("b", "USDC"): (300, -300)}
    assert eng.depth(5) == ([], [(100, 2)])


def test_post_only_that_does_not_cross_rests():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)
    r = eng.apply(limit(2, "b", BUY, 99, 1, post_only=True), 1)
    assert r.accepted and r.order.status == OrderStatus.NEW


def test_post_only_is_only_valid_on_a_gtc_limit():
    eng = open_engine()
    r = eng.apply(limit(1, "b", BUY, 99, 1, post_only=True, tif=IOC), 1)
    assert r.reject_reason == "INVALID_FIELD"


# --- market buys by quote budget ----------------------------------------------------------------
def test_market_buy_by_budget_stops_when_the_next_lot_is_unaffordable():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 2), 1)  # 300 quote per lot
    eng.apply(limit(2, "a", SELL, 110, 5), 1)  # 330 quote per lot
    r = eng.apply(market(3, "b", BUY, quote_budget_units=1000), 1)
    # 2 lots at 100 = 600, then 400 buys one lot at 110 (330), 70 left: not one more lot.
    assert fills_of(r) == [(100, 2, 1, 3), (110, 1, 2, 3)]
    assert r.order.status == OrderStatus.FILLED and r.order.executed_quote_units == 930
    assert deltas_of(r)[("b", "USDC")] == (70, -1000)


def test_market_buy_with_quantity_and_budget_stops_at_whichever_comes_first():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 10), 1)
    r = eng.apply(market(2, "b", BUY, quantity_lots=2, quote_budget_units=1000), 1)
    assert fills_of(r) == [(100, 2, 1, 2)] and r.order.status == OrderStatus.FILLED
    r = eng.apply(market(3, "b", BUY, quantity_lots=5, quote_budget_units=700), 1)
    assert fills_of(r) == [(100, 2, 1, 3)] and r.order.status == OrderStatus.EXPIRED


def test_market_buy_by_budget_alone_expires_when_liquidity_runs_out():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 1), 1)
    r = eng.apply(market(2, "b", BUY, quote_budget_units=10_000), 1)
    assert fills_of(r) == [(100, 1, 1, 2)] and r.order.status == OrderStatus.EXPIRED
    assert deltas_of(r)[("b", "USDC")] == (10_000 - 300, -10_000)


def test_market_buy_spends_at_most_its_lock_when_no_budget_is_given():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 5), 1)
    r = eng.apply(market(2, "b", BUY, quantity_lots=5, locked_units=650), 1)
    assert fills_of(r) == [(100, 2, 1, 2)] and r.order.status == OrderStatus.EXPIRED
    assert deltas_of(r)[("b", "USDC")] == (50, -650)


def test_market_buy_by_budget_alone_cannot_be_fok():
    eng = open_engine()
    r = eng.apply(market(1, "b", BUY, quote_budget_units=1000, tif=FOK), 1)
    assert r.reject_reason == "INVALID_FIELD"


def test_market_sell_sells_its_quantity_down_the_bids():
    eng = open_engine()
    eng.apply(limit(1, "a", BUY, 100, 1), 1)
    eng.apply(limit(2, "a", BUY, 99, 5), 1)
    r = eng.apply(market(3, "b", SELL, quantity_lots=3), 1)
    assert fills_of(r) == [(100, 1, 1, 3), (99, 2, 2, 3)]
    assert r.order.status == OrderStatus.FILLED


# --- self-trade prevention -------------------------------------------------------------------
def _own_and_other_asks(stp_default: STP = STP.EXPIRE_MAKER) -> MatchingEngine:
    rules = MarketRules(**{**_rules_kwargs(), "default_stp": stp_default})
    eng = open_engine(rules)
    eng.apply(limit(1, "b", SELL, 100, 2), 1)  # b's own
    eng.apply(limit(2, "a", SELL, 100, 2), 1)
    return eng


def _rules_kwargs() -> dict:
    return {f: getattr(RULES, f) for f in RULES.__dataclass_fields__}


def test_stp_expire_maker_cancels_the_own_resting_order_and_keeps_matching():
    eng = _own_and_other_asks()
    r = eng.apply(limit(3, "b", BUY, 100, 2, stp=STP.EXPIRE_MAKER), 1)
    assert fills_of(r) == [(100, 2, 2, 3)]
    expired = next(u for u in r.updates if u.order_id == 1)
    assert expired.status == OrderStatus.EXPIRED and expired.reason == "SELF_TRADE_PREVENTED"
    assert r.order.status == OrderStatus.FILLED
    # b's expired sell releases its 20 base units
    assert deltas_of(r)[("b", "SOL")] == (20 + 20, -20)


def test_stp_expire_taker_expires_the_takers_remainder_and_stops():
    eng = _own_and_other_asks()
    r = eng.apply(limit(3, "b", BUY, 100, 2, stp=STP.EXPIRE_TAKER), 1)
    assert r.fills == []
    assert r.order.status == OrderStatus.EXPIRED and r.order.reason == "SELF_TRADE_PREVENTED"
    assert eng.open_orders_count() == 2


def test_stp_expire_both_expires_maker_and_taker():
    eng = _own_and_other_asks()
    r = eng.apply(limit(3, "b", BUY, 100, 2, stp=STP.EXPIRE_BOTH), 1)
    assert r.fills == []
    assert statuses(r) == {3: "expired", 1: "expired"}
    assert eng.open_orders_count() == 1


def test_stp_none_lets_a_user_trade_with_itself():
    eng = _own_and_other_asks()
    r = eng.apply(limit(3, "b", BUY, 100, 2, stp=STP.NONE), 1)
    assert fills_of(r) == [(100, 2, 1, 3)]


def test_stp_mode_defaults_to_the_markets_mode():
    eng = _own_and_other_asks(STP.EXPIRE_TAKER)
    r = eng.apply(limit(3, "b", BUY, 100, 2), 1)
    assert r.order.reason == "SELF_TRADE_PREVENTED" and r.fills == []


# --- fees and balances ----------------------------------------------------------------------
def test_fees_round_up_in_the_exchanges_favour():
    assert fee_units(1, 1) == 1
    assert fee_units(10_000, 1) == 1
    assert fee_units(10_001, 1) == 2
    assert fee_units(12345, 0) == 0


def test_limit_buy_fill_moves_balances_exactly_with_fees_and_price_improvement():
    eng = open_engine(maker_bps=10, taker_bps=20)
    eng.apply(limit(1, "s", SELL, 100, 4), 1)  # locks 40 SOL units
    r = eng.apply(limit(2, "b", BUY, 105, 3), 1)  # locks 105*3*3 = 945 USDC units
    # notional at maker price = 900; base = 30
    buyer_fee = fee_units(30, 20)  # taker buys: 1
    seller_fee = fee_units(900, 10)  # maker sells: 1
    assert r.fills[0].buyer_fee_units == buyer_fee and r.fills[0].seller_fee_units == seller_fee
    assert deltas_of(r) == {
        ("b", "USDC"): (945 - 900, -945),
        ("b", "SOL"): (30 - buyer_fee, 0),
        ("s", "SOL"): (0, -30),
        ("s", "USDC"): (900 - seller_fee, 0),
        (FEE_ACCOUNT, "SOL"): (buyer_fee, 0),
        (FEE_ACCOUNT, "USDC"): (seller_fee, 0),
    }
    assert all(v == 0 for v in delta_sums(r).values())


def test_sell_taker_pays_the_taker_fee_in_quote_and_the_maker_buyer_in_base():
    eng = open_engine(maker_bps=100, taker_bps=200)
    eng.apply(limit(1, "b", BUY, 100, 1), 1)
    r = eng.apply(limit(2, "s", SELL, 100, 1), 1)
    assert r.fills[0].buyer_fee_units == fee_units(10, 100) == 1
    assert r.fills[0].seller_fee_units == fee_units(300, 200) == 6
    assert deltas_of(r)[(FEE_ACCOUNT, "USDC")] == (6, 0)


def test_cancel_releases_the_orders_locked_remaining():
    eng = open_engine()
    eng.apply(limit(1, "b", BUY, 100, 5), 1)  # 1500 locked
    eng.apply(limit(2, "s", SELL, 100, 2), 1)  # consumes 600
    r = eng.apply(CancelOrder(1, "b"), 1)
    assert r.accepted and r.order.status == OrderStatus.CANCELLED
    assert r.order.executed_lots == 2 and r.order.remaining_lots == 0
    assert r.balance_deltas == [BalanceDelta("b", "USDC", 900, -900)]
    assert r.depth_changes == [(BUY, 100, 0)]


def test_rejected_place_releases_all_its_locked_units():
    eng = open_engine()
    r = eng.apply(limit(1, "b", BUY, 100, 5000, locked_units=7), 1)
    assert r.reject_reason == "QUANTITY_TOO_LARGE"
    assert r.balance_deltas == [BalanceDelta("b", "USDC", 7, -7)]


def test_place_with_too_small_a_lock_is_rejected_insufficient_funds():
    eng = open_engine()
    assert eng.apply(limit(1, "b", BUY, 100, 5, locked_units=1499), 1).reject_reason == ("INSUFFICIENT_FUNDS")
    assert eng.apply(limit(2, "s", SELL, 100, 5, locked_units=49), 1).reject_reason == ("INSUFFICIENT_FUNDS")
    assert eng.apply(market(3, "b", BUY, quantity_lots=1, locked_units=0), 1).reject_reason == ("INSUFFICIENT_FUNDS")
    r = eng.apply(market(4, "b", BUY, quote_budget_units=500, locked_units=499), 1)
    assert r.reject_reason == "INSUFFICIENT_FUNDS"


def test_an_over_locked_order_releases_its_surplus_when_it_fills():
    eng = open_engine()
    eng.apply(limit(1, "b", BUY, 100, 1, locked_units=1000), 1)
    r = eng.apply(limit(2, "s", SELL, 100, 1), 1)
    assert deltas_of(r)[("b", "USDC")] == (700, -1000)


def test_every_command_conserves_every_asset():
    eng = open_engine(maker_bps=7, taker_bps=13)
    cmds = [
        limit(1, "a", SELL, 100, 3),
        limit(2, "b", SELL, 101, 3),
        limit(3, "c", BUY, 102, 5),
        market(4, "a", BUY, quote_budget_units=777),
        market(5, "c", SELL, quantity_lots=4),
        CancelAll("c"),
    ]
    for cmd in cmds:
        r = eng.apply(cmd, 1)
        assert all(v == 0 for v in delta_sums(r).values()), r


# --- market states -----------------------------------------------------------------------
def test_a_new_engine_is_halted_until_configured():
    eng = MatchingEngine(RULES, FEE_ACCOUNT)
    assert eng.state == MarketState.HALTED
    r = eng.apply(limit(1, "a", BUY, 100, 1), 1)
    assert r.reject_reason == "MARKET_HALTED" and r.order.status == OrderStatus.REJECTED


def test_configure_sets_state_and_fees_and_is_always_accepted():
    eng = MatchingEngine(RULES, FEE_ACCOUNT)
    r = eng.apply(Configure(MarketState.CLOSED, 3, 4), 1)
    assert r.accepted
    assert (eng.state, eng.maker_fee_bps, eng.taker_fee_bps) == (MarketState.CLOSED, 3, 4)


def test_post_only_state_accepts_only_post_only_limits_and_cancels():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 1), 1)
    eng.apply(Configure(MarketState.POST_ONLY, 0, 0), 1)
    assert eng.apply(limit(2, "b", BUY, 99, 1), 1).reject_reason == "MARKET_NOT_OPEN"
    assert eng.apply(market(3, "b", BUY, 1), 1).reject_reason == "MARKET_NOT_OPEN"
    assert eng.apply(limit(4, "b", BUY, 99, 1, post_only=True), 1).accepted
    assert eng.apply(CancelOrder(1, "a"), 1).accepted


def test_cancel_only_state_accepts_only_cancels():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 1), 1)
    eng.apply(Configure(MarketState.CANCEL_ONLY, 0, 0), 1)
    assert eng.apply(limit(2, "b", BUY, 99, 1, post_only=True), 1).reject_reason == ("MARKET_NOT_OPEN")
    assert eng.apply(CancelAll("a"), 1).accepted


def test_halted_and_closed_markets_reject_everything_and_freeze_the_book():
    for state in (MarketState.HALTED, MarketState.CLOSED):
        eng = open_engine()
        eng.apply(limit(1, "a", SELL, 100, 1), 1)
        eng.apply(Configure(state, 0, 0), 1)
        for cmd in (limit(2, "b", BUY, 100, 1), CancelOrder(1, "a"), CancelAll("a")):
            r = eng.apply(cmd, 1)
            assert not r.accepted and r.reject_reason == "MARKET_HALTED"
        assert eng.depth(5) == ([], [(100, 1)])


# --- cancels -------------------------------------------------------------------------------
def test_cancel_of_an_unknown_order_is_rejected_order_not_found():
    eng = open_engine()
    r = eng.apply(CancelOrder(42, "a"), 1)
    assert not r.accepted and r.reject_reason == "ORDER_NOT_FOUND" and r.order is None


def test_cancel_of_another_users_order_looks_exactly_like_an_unknown_order():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 1), 1)
    other = eng.apply(CancelOrder(1, "mallory"), 1)
    unknown = eng.apply(CancelOrder(2, "mallory"), 1)
    assert (other.accepted, other.reject_reason, other.order, other.balance_deltas) == (
        unknown.accepted,
        unknown.reject_reason,
        unknown.order,
        unknown.balance_deltas,
    )
    assert eng.open_orders_count() == 1


def test_cancel_all_cancels_only_that_users_orders_in_arrival_order():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 101, 1), 1)
    eng.apply(limit(2, "b", SELL, 101, 1), 1)
    eng.apply(limit(3, "a", BUY, 99, 2), 1)
    eng.apply(limit(4, "a", SELL, 101, 3), 1)
    r = eng.apply(CancelAll("a"), 1)
    assert [u.order_id for u in r.updates] == [1, 3, 4]
    assert all(u.status == OrderStatus.CANCELLED for u in r.updates)
    assert r.depth_changes == [(SELL, 101, 1), (BUY, 99, 0)]
    assert eng.depth(5) == ([], [(101, 1)])


def test_cancel_all_with_no_orders_is_accepted():
    eng = open_engine()
    r = eng.apply(CancelAll("nobody"), 1)
    assert r.accepted and r.updates == [] and r.balance_deltas == []


# --- validation -----------------------------------------------------------------------------
def test_place_validation_rejects_with_the_rules_error_code():
    rules = MarketRules(
        **{**_rules_kwargs(), "min_quantity_lots": 2, "max_quantity_lots": 10, "min_notional_units": 600}
    )
    eng = open_engine(rules)
    assert eng.apply(limit(1, "a", BUY, 0, 2, rules=rules), 1).reject_reason == "INVALID_FIELD"
    assert eng.apply(limit(2, "a", BUY, 100, 1, rules=rules), 1).reject_reason == ("QUANTITY_TOO_SMALL")
    assert eng.apply(limit(3, "a", BUY, 100, 11, rules=rules), 1).reject_reason == ("QUANTITY_TOO_LARGE")
    assert eng.apply(limit(4, "a", BUY, 99, 2, rules=rules), 1).reject_reason == ("NOTIONAL_TOO_SMALL")
    assert eng.apply(market(5, "a", SELL, None, rules=rules), 1).reject_reason == "MISSING_FIELD"
    assert eng.apply(limit(6, "a", BUY, 100, 2, rules=rules), 1).accepted
    assert eng.apply(limit(6, "a", BUY, 100, 2, rules=rules), 1).reject_reason == "CONFLICT"


# --- sequencing, ids, results -----------------------------------------------------------------
def test_seq_grows_by_one_for_every_command_accepted_or_rejected():
    eng = MatchingEngine(RULES, FEE_ACCOUNT)
    seqs = [
        eng.apply(limit(1, "a", BUY, 100, 1), 1).seq,  # rejected: halted
        eng.apply(Configure(MarketState.OPEN, 0, 0), 1).seq,
        eng.apply(CancelOrder(5, "a"), 1).seq,  # rejected: unknown
        eng.apply(limit(2, "a", BUY, 100, 1), 1).seq,
        eng.apply(CancelAll("z"), 1).seq,
    ]
    assert seqs == [1, 2, 3, 4, 5] and eng.seq == 5


def test_trade_ids_are_gap_free_per_market():
    eng = open_engine()
    for oid in range(1, 4):
        eng.apply(limit(oid, "a", SELL, 100 + oid, 1), 1)
    r1 = eng.apply(limit(10, "b", BUY, 102, 2), 1)
    eng.apply(limit(11, "b", BUY, 50, 1), 1)
    r2 = eng.apply(market(12, "b", BUY, quantity_lots=1), 1)
    assert [f.trade_id for f in r1.fills + r2.fills] == [1, 2, 3]
    assert eng.last_trade_id == 3


def test_result_lists_every_touched_order_and_level():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 100, 1), 1)
    eng.apply(limit(2, "b", SELL, 100, 1), 1)
    eng.apply(limit(3, "a", SELL, 101, 5), 1)
    r = eng.apply(limit(4, "c", BUY, 102, 4), 1)
    assert r.order is r.updates[0] and r.order.order_id == 4
    assert statuses(r) == {4: "filled", 1: "filled", 2: "filled", 3: "partially_filled"}
    assert r.depth_changes == [(SELL, 100, 0), (SELL, 101, 3)]
    assert r.order.executed_quote_units == (100 + 100 + 101 * 2) * 3
    assert r.ts_ms == 1


def test_depth_and_counts_report_best_first():
    eng = open_engine()
    for oid, (side, price, qty) in enumerate(
        [(BUY, 98, 1), (BUY, 99, 2), (BUY, 99, 3), (SELL, 102, 1), (SELL, 101, 4)], start=1
    ):
        eng.apply(limit(oid, "a", side, price, qty), 1)
    assert eng.depth(10) == ([(99, 5), (98, 1)], [(101, 4), (102, 1)])
    assert eng.depth(1) == ([(99, 5)], [(101, 4)])
    assert eng.level_counts() == (2, 2) and eng.open_orders_count() == 5
    assert (eng.best_bid(), eng.best_ask()) == (99, 101)


# --- snapshot ---------------------------------------------------------------------------------
def test_snapshot_is_json_and_restores_an_identical_engine():
    eng = open_engine(maker_bps=5, taker_bps=9)
    eng.apply(limit(1, "a", SELL, 101, 3), 1)
    eng.apply(limit(2, "b", SELL, 101, 2), 1)
    eng.apply(limit(3, "c", BUY, 101, 1, locked_units=999), 1)
    eng.apply(limit(4, "c", BUY, 99, 2), 1)
    snap = json.loads(json.dumps(eng.snapshot()))
    twin = MatchingEngine.restore(RULES, snap, FEE_ACCOUNT)
    assert twin.state_hash() == eng.state_hash()
    assert (twin.seq, twin.last_trade_id, twin.state) == (eng.seq, eng.last_trade_id, eng.state)
    nxt = limit(5, "d", BUY, 101, 4)
    assert twin.apply(nxt, 7) == eng.apply(nxt, 7)
    assert twin.state_hash() == eng.state_hash()


def test_state_hash_differs_when_state_differs():
    a, b = open_engine(), open_engine()
    a.apply(limit(1, "a", SELL, 101, 3), 1)
    b.apply(limit(1, "a", SELL, 101, 2), 1)
    assert a.state_hash() != b.state_hash()


def test_restore_refuses_another_markets_snapshot():
    eng = open_engine()
    other = MarketRules(**{**_rules_kwargs(), "symbol": "BTC/USDC", "base_asset": "BTC"})
    try:
        MatchingEngine.restore(other, eng.snapshot(), FEE_ACCOUNT)
    except ValueError:
        pass
    else:
        raise AssertionError("restore accepted a snapshot of another market")


def test_side_enum_values_are_plain_strings_in_results():
    eng = open_engine()
    r = eng.apply(limit(1, "a", SELL, 101, 3), 1)
    assert r.order.side is Side.SELL


def test_a_budget_capped_fill_stops_at_the_maker_it_could_not_finish():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 97, 2), 1)
    eng.apply(limit(2, "b", SELL, 97, 1), 1)  # b's own order, behind a's in the queue
    r = eng.apply(market(3, "b", BUY, quote_budget_units=291), 1)  # exactly one lot at 97
    assert fills_of(r) == [(97, 1, 1, 3)] and r.order.status == OrderStatus.FILLED
    assert statuses(r) == {3: "filled", 1: "partially_filled"}  # order 2 untouched
    assert eng.open_orders_count() == 2


def test_a_market_buy_budget_below_one_lot_at_one_tick_expires_without_trading():
    eng = open_engine()
    eng.apply(limit(1, "a", SELL, 1, 1), 1)  # one lot at one tick costs 3 quote units
    r = eng.apply(market(2, "b", BUY, quote_budget_units=2), 1)
    assert r.order.status == OrderStatus.EXPIRED and r.fills == []
    assert deltas_of(r) == {("b", "USDC"): (2, -2)}

"""issue 11 defect 1 (core): market rules change at a sequence number.

A `Configure` carries every mutable rule (state, fees, minQuantity, maxQuantity,
minNotional, default self-trade prevention); the core applies it at that command's seq and
its snapshot (hence its state hash) holds the rules in force. A configure without rule
fields (written before this change) keeps the rules in force; before a stream's first
configure the core holds bootstrap rules that no registry value decides.
"""

from __future__ import annotations

import dataclasses

from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import MarketState, SelfTradePrevention
from cryptex_engine.domain.commands import CancelOrder, Configure, RejectOrder
from cryptex_engine.domain.matching import MatchingEngine, bootstrap_rules
from tests.engine.helpers import BUY, RULES, SELL, limit, market, open_engine, statuses

OPEN = MarketState.OPEN


def rules_configure(min_lots: int = 1, max_lots: int = 1000, min_notional: int = 0,
                    stp: SelfTradePrevention = SelfTradePrevention.EXPIRE_MAKER) -> Configure:
    return Configure(OPEN, 0, 0, min_quantity_lots=min_lots, max_quantity_lots=max_lots,
                     min_notional_units=min_notional, default_stp=stp)


def test_a_configure_changes_the_rules_at_its_sequence() -> None:
    engine = open_engine()
    assert engine.apply(limit(1, "a", SELL, 100, 8), 1).order.status.value == "new"  # type: ignore[union-attr]
    cfg = engine.apply(rules_configure(max_lots=5), 2)
    assert cfg.accepted and engine.rules.max_quantity_lots == 5 and engine.rules_seq == cfg.seq
    r = engine.apply(limit(2, "b", SELL, 100, 8), 3)
    assert not r.accepted and r.reject_reason == "QUANTITY_TOO_LARGE"
    assert [(d.user_id, d.asset, d.available, d.locked) for d in r.balance_deltas] == [("b", "SOL", 80, -80)]
    # the order that rested under the old rules stays and can be cancelled
    assert statuses(engine.apply(CancelOrder(1, "a"), 4)) == {1: "cancelled"}


def test_min_quantity_min_notional_and_default_stp_are_sequenced() -> None:
    engine = open_engine()
    engine.apply(rules_configure(min_lots=3, min_notional=600,
                                 stp=SelfTradePrevention.EXPIRE_TAKER), 1)
    assert engine.apply(limit(1, "a", BUY, 100, 2), 2).reject_reason == "QUANTITY_TOO_SMALL"
    assert engine.apply(limit(2, "a", BUY, 50, 3), 3).reject_reason == "NOTIONAL_TOO_SMALL"  # 450 < 600
    engine.apply(rules_configure(min_lots=1, min_notional=901, stp=SelfTradePrevention.EXPIRE_TAKER), 4)
    assert engine.apply(limit(3, "a", BUY, 100, 3), 5).reject_reason == "NOTIONAL_TOO_SMALL"  # 900 < 901
    engine.apply(rules_configure(min_lots=1, min_notional=0, stp=SelfTradePrevention.EXPIRE_TAKER), 6)
    engine.apply(limit(4, "a", SELL, 100, 3), 7)
    taker = engine.apply(limit(5, "a", BUY, 100, 3), 8)  # default STP now expires the taker
    assert statuses(taker) == {5: "expired"} and 4 in engine.book.orders
    # a market buy by quote budget alone must reach minNotional too (the API's rule)
    engine.apply(rules_configure(min_notional=1000), 9)
    r = engine.apply(market(6, "b", BUY, quote_budget_units=999), 10)
    assert r.reject_reason == "NOTIONAL_TOO_SMALL" and r.balance_deltas[0].available == 999


def test_a_configure_without_rules_keeps_the_rules_in_force() -> None:
    engine = open_engine()
    engine.apply(rules_configure(max_lots=5), 1)
    seq = engine.rules_seq
    engine.apply(Configure(MarketState.POST_ONLY, 1, 2), 2)  # an entry from before rules travelled
    assert engine.rules.max_quantity_lots == 5 and engine.rules_seq == seq
    assert (engine.state, engine.maker_fee_bps, engine.taker_fee_bps) == (MarketState.POST_ONLY, 1, 2)


def test_bootstrap_rules_do_not_depend_on_the_registry() -> None:
    strict = dataclasses.replace(RULES, min_quantity_lots=50, max_quantity_lots=60, min_notional_units=10**6,
                                 default_stp=SelfTradePrevention.NONE)
    a, b = MatchingEngine.empty(strict, FEE_ACCOUNT), MatchingEngine.empty(RULES, FEE_ACCOUNT)
    assert a.rules == b.rules == bootstrap_rules(RULES) and a.state == MarketState.HALTED
    assert a.state_hash() == b.state_hash() and a.rules_seq == 0


def test_an_invalid_configure_is_rejected_and_changes_nothing() -> None:
    engine = open_engine()
    before = engine.rules
    r = engine.apply(rules_configure(min_lots=10, max_lots=5), 1)
    assert not r.accepted and r.reject_reason == "INVALID_FIELD" and engine.rules == before
    assert engine.seq == 2  # still one sequence number


def test_snapshot_keeps_the_rules_in_force_and_the_hash_covers_them() -> None:
    engine = open_engine()
    engine.apply(limit(1, "a", SELL, 100, 4), 1)
    h = engine.state_hash()
    engine.apply(rules_configure(max_lots=5, stp=SelfTradePrevention.EXPIRE_BOTH), 2)
    assert engine.state_hash() != h
    back = MatchingEngine.restore(bootstrap_rules(RULES), engine.snapshot(), FEE_ACCOUNT)
    assert back.rules == engine.rules and back.rules_seq == engine.rules_seq
    assert back.state_hash() == engine.state_hash()
    # a snapshot written before rules were stored (format 1) restores with bootstrap rules
    legacy = engine.snapshot()
    for name in ("rules", "rules_seq"):
        legacy.pop(name)
    legacy["format"] = 1
    old = MatchingEngine.restore(RULES, legacy, FEE_ACCOUNT)
    assert old.rules == bootstrap_rules(RULES) and old.rules_seq == 0 and 1 in old.book.orders


def test_a_reject_order_command_releases_the_lock_in_sequence() -> None:
    engine = open_engine()
    r = engine.apply(RejectOrder(7, "a", BUY, "USDC", 1234, "UNSUPPORTED_COMMAND"), 5)
    assert (r.seq, r.accepted, r.reject_reason) == (2, False, "UNSUPPORTED_COMMAND")
    assert statuses(r) == {7: "rejected"}
    assert [(d.user_id, d.asset, d.available, d.locked) for d in r.balance_deltas] == [("a", "USDC", 1234, -1234)]

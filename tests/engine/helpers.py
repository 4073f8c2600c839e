"""Builders for engine commands and a tiny ledger that applies an engine's balance deltas."""

from __future__ import annotations

from collections import defaultdict

from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.markets import MarketRules, MarketState, SelfTradePrevention
from cryptex_common.messages import OrderType, Side, TimeInForce
from cryptex_engine.domain.commands import CommandResult, Configure, PlaceOrder
from cryptex_engine.domain.matching import MatchingEngine

# One lot = 10 base units; one tick times one lot = 3 quote units.
RULES = MarketRules(
    symbol="SOL/USDC",
    base_asset="SOL",
    quote_asset="USDC",
    base_units_per_lot=10,
    quote_units_per_tick_lot=3,
    min_quantity_lots=1,
    max_quantity_lots=1000,
    min_notional_units=0,
)

BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK


def open_engine(rules: MarketRules = RULES, maker_bps: int = 0, taker_bps: int = 0) -> MatchingEngine:
    engine = MatchingEngine(rules, FEE_ACCOUNT)
    engine.apply(Configure(MarketState.OPEN, maker_bps, taker_bps), 0)
    return engine


def limit(
    order_id: int,
    user_id: str,
    side: Side,
    price_ticks: int,
    quantity_lots: int,
    tif: TimeInForce = GTC,
    post_only: bool = False,
    stp: SelfTradePrevention | None = None,
    locked_units: int | None = None,
    rules: MarketRules = RULES,
) -> PlaceOrder:
    if locked_units is None:
        locked_units = (
            rules.notional_units(price_ticks, quantity_lots) if side == BUY else rules.base_units(quantity_lots)
        )
    return PlaceOrder(
        order_id,
        user_id,
        side,
        OrderType.LIMIT,
        tif,
        post_only,
        price_ticks,
        quantity_lots,
        None,
        stp,
        locked_units,
    )


def market(
    order_id: int,
    user_id: str,
    side: Side,
    quantity_lots: int | None = None,
    quote_budget_units: int | None = None,
    tif: TimeInForce = IOC,
    stp: SelfTradePrevention | None = None,
    locked_units: int | None = None,
    rules: MarketRules = RULES,
) -> PlaceOrder:
    if locked_units is None:
        if side == SELL:
            locked_units = rules.base_units(quantity_lots or 0)
        elif quote_budget_units is not None:
            locked_units = quote_budget_units
        else:
            locked_units = 10**9
    return PlaceOrder(
        order_id,
        user_id,
        side,
        OrderType.MARKET,
        tif,
        False,
        None,
        quantity_lots,
        quote_budget_units,
        stp,
        locked_units,
    )


class Ledger:
    """(available, locked) per (user, asset), moved by API locks and engine deltas."""

    def __init__(self) -> None:
        self.balances: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def deposit(self, user_id: str, asset: str, units: int) -> None:
        self.balances[(user_id, asset)][0] += units

    def api_lock(self, user_id: str, asset: str, units: int) -> None:
        entry = self.balances[(user_id, asset)]
        entry[0] -= units
        entry[1] += units

    def apply(self, result: CommandResult) -> None:
        for d in result.balance_deltas:
            entry = self.balances[(d.user_id, d.asset)]
            entry[0] += d.available
            entry[1] += d.locked

    def view(self) -> dict[tuple[str, str], tuple[int, int]]:
        return {k: (v[0], v[1]) for k, v in sorted(self.balances.items()) if v != [0, 0]}


def delta_sums(result: CommandResult) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for d in result.balance_deltas:
        sums[d.asset] += d.available + d.locked
    return dict(sums)


def fills_of(result: CommandResult) -> list[tuple[int, int, int, int]]:
    """(price_ticks, quantity_lots, maker_order_id, taker_order_id) per fill."""
    return [(f.price_ticks, f.quantity_lots, f.maker_order_id, f.taker_order_id) for f in result.fills]


def statuses(result: CommandResult) -> dict[int, str]:
    return {u.order_id: u.status.value for u in result.updates}

"""The market spec: defined once, used by markets.yaml, the Market CRD, the API and the engine.

Invariants (checked by `MarketSpec` on construction):
- `symbol` is `BASE/QUOTE` and agrees with `baseAsset`/`quoteAsset`;
- one lot is a whole number of the base asset's smallest units
  (`lotSize * 10**baseDecimals` is an integer);
- one tick times one lot is a whole number of the quote asset's smallest units
  (`tickSize * lotSize * 10**quoteDecimals` is an integer), so every notional is exact;
- `minQuantity <= maxQuantity`, both on the lot grid; fees are basis points in [0, 1000].

Inside the exchange prices are integer ticks, quantities integer lots and amounts integer
smallest units; `MarketRules` carries the integer form the engine works with.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

SYMBOL_PATTERN = r"^[A-Z0-9]{2,10}/[A-Z0-9]{2,10}$"
ASSET_PATTERN = r"^[A-Z0-9]{2,10}$"
DECIMAL_PATTERN = r"^(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?$"
MAX_FEE_BPS = 1000
# Balances are exact decimal strings in Redis with no size limit (decision 0009), but one
# order's amounts and notional must fit int64 (AMOUNT_TOO_LARGE), so an asset's internal
# precision must leave room: 12 decimals still allows 9.2 million whole units per order.
MAX_ASSET_DECIMALS = 12


class MarketState(StrEnum):
    OPEN = "open"
    POST_ONLY = "postOnly"
    CANCEL_ONLY = "cancelOnly"
    HALTED = "halted"
    CLOSED = "closed"


class SelfTradePrevention(StrEnum):
    EXPIRE_MAKER = "expire_maker"
    EXPIRE_TAKER = "expire_taker"
    EXPIRE_BOTH = "expire_both"
    NONE = "none"


def market_tag(symbol: str) -> str:
    """`SOL/USDC` -> `SOL_USDC`, the form used inside Redis keys."""
    return symbol.replace("/", "_")


def normalize_symbol(raw: str) -> str:
    """Accept `sol/usdc`, `SOL_USDC`, `SOL-USDC`, `SOL/USDC`; return `SOL/USDC`."""
    return raw.strip().upper().replace("_", "/").replace("-", "/")


def _exact_int(value: Decimal) -> int | None:
    return int(value) if value == value.to_integral_value() else None


class MarketSpec(BaseModel):
    """One trading pair. Field names on the wire and in YAML are camelCase."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")

    symbol: str = Field(pattern=SYMBOL_PATTERN, description="BASE/QUOTE, e.g. SOL/USDC")
    base_asset: str = Field(alias="baseAsset", pattern=ASSET_PATTERN)
    base_decimals: int = Field(alias="baseDecimals", ge=0, le=MAX_ASSET_DECIMALS)
    quote_asset: str = Field(alias="quoteAsset", pattern=ASSET_PATTERN)
    quote_decimals: int = Field(alias="quoteDecimals", ge=0, le=MAX_ASSET_DECIMALS)
    tick_size: str = Field(alias="tickSize", pattern=DECIMAL_PATTERN)
    lot_size: str = Field(alias="lotSize", pattern=DECIMAL_PATTERN)
    min_quantity: str = Field(alias="minQuantity", pattern=DECIMAL_PATTERN)
    max_quantity: str = Field(alias="maxQuantity", pattern=DECIMAL_PATTERN)
    min_notional: str = Field(alias="minNotional", default="0", pattern=DECIMAL_PATTERN)
    maker_fee_bps: int = Field(alias="makerFeeBps", default=0, ge=0, le=MAX_FEE_BPS)
    taker_fee_bps: int = Field(alias="takerFeeBps", default=0, ge=0, le=MAX_FEE_BPS)
    self_trade_prevention: SelfTradePrevention = Field(
        alias="selfTradePrevention", default=SelfTradePrevention.EXPIRE_MAKER
    )
    state: MarketState = MarketState.OPEN

    @model_validator(mode="after")
    def _check_grid(self) -> MarketSpec:
        base, quote = self.symbol.split("/")
        if (base, quote) != (self.base_asset, self.quote_asset):
            raise ValueError(
                f"symbol {self.symbol} does not match assets {self.base_asset}/{self.quote_asset}"
            )
        tick, lot = Decimal(self.tick_size), Decimal(self.lot_size)
        if tick <= 0 or lot <= 0:
            raise ValueError("tickSize and lotSize must be positive")
        if _exact_int(lot * 10**self.base_decimals) is None:
            raise ValueError("lotSize must be a whole number of base smallest units")
        if _exact_int(tick * lot * 10**self.quote_decimals) is None:
            raise ValueError("tickSize*lotSize must be a whole number of quote smallest units")
        for name in ("min_quantity", "max_quantity"):
            if _exact_int(Decimal(getattr(self, name)) / lot) is None:
                raise ValueError(f"{name} must be a multiple of lotSize")
        if _exact_int(Decimal(self.min_notional) * 10**self.quote_decimals) is None:
            raise ValueError("minNotional has more decimals than the quote asset")
        if Decimal(self.min_quantity) > Decimal(self.max_quantity):
            raise ValueError("minQuantity must not exceed maxQuantity")
        if Decimal(self.min_quantity) <= 0:
            raise ValueError("minQuantity must be positive")
        return self

    @property
    def tag(self) -> str:
        return market_tag(self.symbol)

    def rules(self) -> MarketRules:
        tick, lot = Decimal(self.tick_size), Decimal(self.lot_size)
        return MarketRules(
            symbol=self.symbol,
            base_asset=self.base_asset,
            quote_asset=self.quote_asset,
            base_units_per_lot=int(lot * 10**self.base_decimals),
            quote_units_per_tick_lot=int(tick * lot * 10**self.quote_decimals),
            min_quantity_lots=int(Decimal(self.min_quantity) / lot),
            max_quantity_lots=int(Decimal(self.max_quantity) / lot),
            min_notional_units=int(Decimal(self.min_notional) * 10**self.quote_decimals),
            default_stp=self.self_trade_prevention,
        )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


@dataclass(frozen=True, slots=True)
class MarketRules:
    """The integer form of a MarketSpec: all the engine needs, no Decimal, no I/O.

    notional (quote smallest units) = price_ticks * quantity_lots * quote_units_per_tick_lot
    base amount (base smallest units) = quantity_lots * base_units_per_lot
    """

    symbol: str
    base_asset: str
    quote_asset: str
    base_units_per_lot: int
    quote_units_per_tick_lot: int
    min_quantity_lots: int
    max_quantity_lots: int
    min_notional_units: int
    default_stp: SelfTradePrevention = SelfTradePrevention.EXPIRE_MAKER

    def notional_units(self, price_ticks: int, quantity_lots: int) -> int:
        return price_ticks * quantity_lots * self.quote_units_per_tick_lot

    def base_units(self, quantity_lots: int) -> int:
        return quantity_lots * self.base_units_per_lot


def load_markets_yaml(text: str) -> list[MarketSpec]:
    """Parse markets.yaml: `markets: [ {symbol: ..., ...}, ... ]`."""
    import yaml  # local import: yaml is only needed by launchers and tests

    doc = yaml.safe_load(text) or {}
    specs = [MarketSpec.model_validate(item) for item in doc.get("markets", [])]
    symbols = [s.symbol for s in specs]
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"duplicate market symbols in markets.yaml: {symbols}")
    return specs

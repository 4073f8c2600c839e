"""Public payloads: internal integer records turned into the decimal strings clients see.

Used by the API (REST bodies), the engine (public pub/sub channels) and wsgateway, so a
field is spelled and formatted the same everywhere. Timestamps are integer milliseconds.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cryptex_common.markets import MarketSpec
from cryptex_common.messages import FillRecord, OrderRecord, TradeRecord


class StepFormat:
    """Integer steps of one grid (a tick, a lot, an asset's smallest unit) as decimal
    strings, exactly as `money.format_steps` writes them (a test proves it), but with the
    grid's mantissa and decimal places worked out once: this runs for every level, trade
    and order the engine publishes."""

    __slots__ = ("_factor", "_places")

    def __init__(self, step: Decimal) -> None:
        sign, digits, exponent = step.as_tuple()
        assert isinstance(exponent, int) and not sign
        mantissa = int("".join(map(str, digits)))
        self._places = -exponent if exponent < 0 else 0
        self._factor = mantissa * (10**exponent if exponent > 0 else 1)

    def __call__(self, steps: int) -> str:
        scaled = steps * self._factor
        places = self._places
        if scaled < 0:
            return "-" + self(-steps)
        if not places:
            return str(scaled)
        text = str(scaled)
        if len(text) <= places:
            text = text.rjust(places + 1, "0")
        return f"{text[:-places]}.{text[-places:]}"


class WireFormat:
    """Formats amounts of one market. Cheap to build; keep one per market."""

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.tick = Decimal(spec.tick_size)
        self.lot = Decimal(spec.lot_size)
        self.price_text = StepFormat(self.tick)  # never None: for ints only
        self.quantity_text = StepFormat(self.lot)
        self.quote_text = StepFormat(Decimal(1).scaleb(-spec.quote_decimals))
        self.base_text = StepFormat(Decimal(1).scaleb(-spec.base_decimals))

    def price(self, ticks: int | None) -> str | None:
        return None if ticks is None else self.price_text(ticks)

    def quantity(self, lots: int | None) -> str | None:
        return None if lots is None else self.quantity_text(lots)

    def quote(self, units: int | None) -> str | None:
        return None if units is None else self.quote_text(units)

    def base(self, units: int) -> str:
        return self.base_text(units)

    def fee(self, units: int, asset: str) -> str:
        return self.base_text(units) if asset == self.spec.base_asset else self.quote_text(units)

    def order(self, o: OrderRecord) -> dict[str, Any]:
        return {
            "orderId": str(o.order_id),
            "clientOrderId": o.client_order_id,
            "market": o.market,
            "side": o.side.value,
            "type": o.order_type.value,
            "timeInForce": o.time_in_force.value,
            "postOnly": o.post_only,
            "price": self.price(o.price_ticks),
            "quantity": self.quantity(o.quantity_lots),
            "quoteQuantity": self.quote(o.quote_budget_units),
            "executedQty": self.quantity(o.executed_lots),
            "executedQuoteQty": self.quote(o.executed_quote_units),
            "status": o.status.value,
            "reason": o.reason,
            "createdAt": o.created_ms,
            "updatedAt": o.updated_ms,
        }

    def fill(self, f: FillRecord) -> dict[str, Any]:
        return {
            "tradeId": str(f.trade_id),
            "orderId": str(f.order_id),
            "market": f.market,
            "side": f.side.value,
            "price": self.price(f.price_ticks),
            "quantity": self.quantity(f.quantity_lots),
            "quoteQuantity": self.quote(f.quote_units),
            "fee": self.fee(f.fee_units, f.fee_asset),
            "feeAsset": f.fee_asset,
            "liquidity": "maker" if f.is_maker else "taker",
            "ts": f.ts_ms,
        }

    def trade(self, t: TradeRecord) -> dict[str, Any]:
        return self.public_trade(t.trade_id, t.price_ticks, t.quantity_lots, t.quote_units,
                                 t.taker_side.value, t.ts_ms)

    def public_trade(self, trade_id: int, price_ticks: int, quantity_lots: int, quote_units: int,
                     taker_side: str, ts_ms: int) -> dict[str, Any]:
        return {
            "tradeId": str(trade_id),
            "market": self.spec.symbol,
            "price": self.price(price_ticks),
            "quantity": self.quantity(quantity_lots),
            "quoteQuantity": self.quote(quote_units),
            "takerSide": taker_side,
            "ts": ts_ms,
        }

    def levels(self, levels: list[tuple[int, int]]) -> list[list[str]]:
        price, quantity = self.price_text, self.quantity_text
        return [[price(p), quantity(q)] for p, q in levels]

    def order_dict(self, rec: dict[str, Any]) -> dict[str, Any]:
        """`order()` of an OrderRecord given as its camelCase dict (the engine's records and
        replies), without building the model: same keys, same strings. Optional fields may
        be absent (a reply from an older engine)."""
        get = rec.get
        return {
            "orderId": str(rec["orderId"]),
            "clientOrderId": get("clientOrderId"),
            "market": rec["market"],
            "side": rec["side"],
            "type": rec["orderType"],
            "timeInForce": rec["timeInForce"],
            "postOnly": get("postOnly", False),
            "price": self.price(get("priceTicks")),
            "quantity": self.quantity(get("quantityLots")),
            "quoteQuantity": self.quote(get("quoteBudgetUnits")),
            "executedQty": self.quantity_text(get("executedLots", 0)),
            "executedQuoteQty": self.quote_text(get("executedQuoteUnits", 0)),
            "status": rec["status"],
            "reason": get("reason"),
            "createdAt": rec["createdMs"],
            "updatedAt": rec["updatedMs"],
        }

    def fill_dict(self, f: dict[str, Any]) -> dict[str, Any]:
        """`fill()` of a FillRecord given as its camelCase dict (see `fill_dicts`)."""
        return {
            "tradeId": str(f["tradeId"]),
            "orderId": str(f["orderId"]),
            "market": f["market"],
            "side": f["side"],
            "price": self.price_text(f["priceTicks"]),
            "quantity": self.quantity_text(f["quantityLots"]),
            "quoteQuantity": self.quote_text(f["quoteUnits"]),
            "fee": self.fee(f["feeUnits"], f["feeAsset"]),
            "feeAsset": f["feeAsset"],
            "liquidity": "maker" if f["isMaker"] else "taker",
            "ts": f["tsMs"],
        }


def fill_dicts(trade: dict[str, Any], base_asset: str, quote_asset: str) -> list[dict[str, Any]]:
    """The two sides of one trade (a TradeRecord as its camelCase dict), as buyer and
    seller each see it: FillRecord dicts. The buyer's fee is in base, the seller's in quote."""
    taker_is_buy = trade["takerSide"] == "buy"
    common = {
        "tradeId": trade["tradeId"],
        "market": trade["market"],
        "priceTicks": trade["priceTicks"],
        "quantityLots": trade["quantityLots"],
        "quoteUnits": trade["quoteUnits"],
        "tsMs": trade["tsMs"],
    }
    return [
        {**common, "orderId": trade["buyOrderId"], "userId": trade["buyUserId"], "side": "buy",
         "feeUnits": trade["buyerFeeUnits"], "feeAsset": base_asset, "isMaker": not taker_is_buy},
        {**common, "orderId": trade["sellOrderId"], "userId": trade["sellUserId"], "side": "sell",
         "feeUnits": trade["sellerFeeUnits"], "feeAsset": quote_asset, "isMaker": taker_is_buy},
    ]


def fills_for_trade(trade: TradeRecord, base_asset: str, quote_asset: str) -> list[FillRecord]:
    """`fill_dicts` as validated FillRecords."""
    return [
        FillRecord.model_validate(d)
        for d in fill_dicts(trade.model_dump(by_alias=True, mode="json"), base_asset, quote_asset)
    ]

"""Native wire dicts (decimal strings, as the native API answers) -> Binance payloads.

Mappings: status new/partially_filled/filled/cancelled/expired/rejected -> NEW,
PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REJECTED (an IOC/FOK/market remainder is
EXPIRED, as on Binance); a postOnly limit is LIMIT_MAKER; ids are integers; a quantity the
order did not have (a market buy by quoteOrderQty) is zero on the lot grid.
"""

from __future__ import annotations

from typing import Any

from cryptex_common.binance import binance_symbol
from cryptex_common.wire import WireFormat

STATUS = {"new": "NEW", "partially_filled": "PARTIALLY_FILLED", "filled": "FILLED", "cancelled": "CANCELED",
          "expired": "EXPIRED", "rejected": "REJECTED"}
STP_MODES = {"NONE": "none", "EXPIRE_TAKER": "expire_taker", "EXPIRE_MAKER": "expire_maker",
             "EXPIRE_BOTH": "expire_both"}
STP_NAMES = {v: k for k, v in STP_MODES.items()}


def order_type(o: dict[str, Any]) -> str:
    if o["type"] == "market":
        return "MARKET"
    return "LIMIT_MAKER" if o.get("postOnly") else "LIMIT"


def _common(o: dict[str, Any], fmt: WireFormat, stp: str) -> dict[str, Any]:
    zero_qty, zero_quote = fmt.quantity_text(0), fmt.quote_text(0)
    return {
        "symbol": binance_symbol(o["market"]),
        "orderId": int(o["orderId"]),
        "orderListId": -1,
        "clientOrderId": o.get("clientOrderId") or "",
        "price": o.get("price") or fmt.price_text(0),
        "origQty": o.get("quantity") or zero_qty,
        "executedQty": o.get("executedQty") or zero_qty,
        "cummulativeQuoteQty": o.get("executedQuoteQty") or zero_quote,
        "status": STATUS[o["status"]],
        "timeInForce": o["timeInForce"],
        "type": order_type(o),
        "side": o["side"].upper(),
        "selfTradePreventionMode": stp,
    }


def placed(o: dict[str, Any], fills: list[dict[str, Any]], fmt: WireFormat, resp_type: str,
           stp: str) -> dict[str, Any]:
    """POST /api/v3/order's answer: ACK, RESULT or FULL (RESULT plus `fills`)."""
    head = {"symbol": binance_symbol(o["market"]), "orderId": int(o["orderId"]), "orderListId": -1,
            "clientOrderId": o.get("clientOrderId") or "", "transactTime": o["updatedAt"]}
    if resp_type == "ACK":
        return head
    body = {**head, **_common(o, fmt, stp), "transactTime": o["updatedAt"], "workingTime": o["createdAt"],
            "origQuoteOrderQty": o.get("quoteQuantity") or fmt.quote_text(0)}
    if resp_type == "FULL":
        body["fills"] = [{"price": f["price"], "qty": f["quantity"], "commission": f["fee"],
                          "commissionAsset": f["feeAsset"], "tradeId": int(f["tradeId"])} for f in fills]
    return body


def queried(o: dict[str, Any], fmt: WireFormat, stp: str) -> dict[str, Any]:
    """GET /api/v3/order, openOrders and allOrders rows."""
    return {**_common(o, fmt, stp), "stopPrice": fmt.price_text(0), "icebergQty": fmt.quantity_text(0),
            "time": o["createdAt"], "updateTime": o["updatedAt"],
            "isWorking": o["status"] in ("new", "partially_filled"), "workingTime": o["createdAt"],
            "origQuoteOrderQty": o.get("quoteQuantity") or fmt.quote_text(0)}


def cancelled(o: dict[str, Any], fmt: WireFormat, stp: str, orig_client_order_id: str | None,
              now_ms: int) -> dict[str, Any]:
    """DELETE /api/v3/order and openOrders rows."""
    coid = o.get("clientOrderId") or ""
    return {"symbol": binance_symbol(o["market"]), "origClientOrderId": orig_client_order_id or coid,
            **_common(o, fmt, stp), "transactTime": now_ms,
            "origQuoteOrderQty": o.get("quoteQuantity") or fmt.quote_text(0)}


def my_trade(f: dict[str, Any]) -> dict[str, Any]:
    """GET /api/v3/myTrades row from a native fill."""
    return {"symbol": binance_symbol(f["market"]), "id": int(f["tradeId"]), "orderId": int(f["orderId"]),
            "orderListId": -1, "price": f["price"], "qty": f["quantity"], "quoteQty": f["quoteQuantity"],
            "commission": f["fee"], "commissionAsset": f["feeAsset"], "time": f["ts"],
            "isBuyer": f["side"] == "buy", "isMaker": f["liquidity"] == "maker", "isBestMatch": True}


def public_trade(t: dict[str, Any]) -> dict[str, Any]:
    """GET /api/v3/trades row from a native public trade (the buyer is the maker when the
    taker sold)."""
    return {"id": int(t["tradeId"]), "price": t["price"], "qty": t["quantity"], "quoteQty": t["quoteQuantity"],
            "time": t["ts"], "isBuyerMaker": t["takerSide"] == "sell", "isBestMatch": True}


def agg_trade(t: dict[str, Any]) -> dict[str, Any]:
    """GET /api/v3/aggTrades row: one per trade (a = f = l = the trade id)."""
    trade_id = int(t["tradeId"])
    return {"a": trade_id, "p": t["price"], "q": t["quantity"], "f": trade_id, "l": trade_id, "T": t["ts"],
            "m": t["takerSide"] == "sell", "M": True}

"""The public market-data payloads the engine publishes have exactly the shapes declared in
`cryptex_common.market_data` (the contract the gateway and the REST routes read): a crossing
pair goes through the real decoder, matching core, translator and market-data builder."""

from __future__ import annotations

import typing
from typing import Any

import orjson

from cryptex_common import keys
from cryptex_common import market_data as payloads
from cryptex_common.markets import MarketState, load_markets_yaml
from cryptex_engine.decode import read_entry
from cryptex_engine.domain.commands import Configure
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.market_data import MarketData
from cryptex_engine.settings import EngineSettings
from cryptex_engine.translate import BatchOutput, Translator
from tests.e2e.conftest import ROOT

SPEC = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC")


def place(order_id: int, user: str, side: str, price_ticks: int, lots: int) -> tuple[str, dict[str, str]]:
    rules = SPEC.rules()
    locked = rules.base_units(lots) if side == "sell" else rules.notional_units(price_ticks, lots)
    command = {"v": 1, "type": "place", "userId": user, "side": side, "orderType": "limit",
               "priceTicks": price_ticks, "quantityLots": lots, "lockedUnits": locked,
               "replyTo": "reply:test", "requestId": f"r{order_id}"}
    return f"1700000000000-{order_id}", {"id": str(order_id), "c": orjson.dumps(command).decode()}


def declared(schema: Any) -> set[str]:
    return set(typing.get_type_hints(schema))


def test_every_public_payload_has_its_declared_shape() -> None:
    core = MatchingEngine.empty(SPEC.rules(), keys.FEE_ACCOUNT)
    core.apply(Configure(MarketState.OPEN, 0, 0), 0)
    translator, md, out = Translator(SPEC), MarketData(SPEC, EngineSettings(market=SPEC.symbol)), BatchOutput()
    results, decoded = [], []
    lots = 1000  # well above the market's minimum notional
    for stream_id, fields in (place(1, "1", "sell", 12_000, 3 * lots), place(2, "2", "buy", 12_000, lots)):
        d, error = read_entry(stream_id, fields, SPEC)
        assert error is None and d is not None
        result = core.apply(d.command, d.ts_ms)
        md.add_trades(d.ts_ms, result)
        translator.add(d, result, out)
        results.append(result)
        decoded.append(d)
    assert out.trades, "the pair must trade"
    write = md.build(core, out, results, results[0].seq, results[-1].seq, 1_700_000_000_000)

    published = {channel: orjson.loads(body) for channel, body in write.publishes}
    diff = published[keys.depth_channel(SPEC.symbol)]
    assert set(diff) == declared(payloads.DepthDiff)
    assert (diff["U"], diff["u"], diff["pu"]) == (results[0].seq, results[-1].seq, results[0].seq - 1)
    assert len(diff["asks"]) == 1 and diff["asks"][0][1] != "0" and diff["bids"] == []
    book_ticker = published[keys.book_ticker_channel(SPEC.symbol)]
    assert set(book_ticker) == declared(payloads.BookTicker)
    [trade] = published[keys.trades_channel(SPEC.symbol)]
    assert set(trade) == declared(payloads.PublicTrade)
    assert all(set(orjson.loads(t)) == declared(payloads.PublicTrade) for t in write.trades)
    assert write.depth_header is not None
    header = orjson.loads(write.depth_header)
    assert set(header) == declared(payloads.DepthHeader) and header["lastUpdateId"] == results[-1].seq
    # the first batch of a fresh builder replaces the stored book with the core's whole book
    assert write.depth_replace and [(side, price) for side, price, _ in write.depth_levels] == [("a", 12_000)]

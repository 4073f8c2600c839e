"""Pure modules of the gateway: stream names, subscriptions, book + checksum, klines,
protocol parsing, rate limit and frame encoding. No I/O."""

from __future__ import annotations

import zlib
from decimal import Decimal

import orjson
import pytest

from cryptex_common.candles import aggregate
from cryptex_common.intervals import bucket_start_ms
from cryptex_common.markets import load_markets_yaml
from cryptex_common.wire import WireFormat
from cryptex_wsgateway.book import DepthTracker, LocalBook, checksum, checksum_string
from cryptex_wsgateway.klines import KlineBuilder, parse_trades
from cryptex_wsgateway.protocol import (
    ProtocolError,
    TokenBucket,
    encode_text_frame,
    parse_request,
)
from cryptex_wsgateway.streams import Stream, StreamError, parse_stream
from cryptex_wsgateway.subscriptions import Subscriptions, TooManyStreams, private_topic
from tests.e2e.conftest import ROOT

MARKETS = {"SOL/USDC", "BTC/USDC"}


# --- stream names -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("depth@SOL/USDC", "depth@SOL/USDC"),
        ("DEPTH@sol/usdc", "depth@SOL/USDC"),
        ("trades.SOL_USDC", "trades@SOL/USDC"),
        ("trades.sol_usdc", "trades@SOL/USDC"),
        ("trade@SOL_USDC", "trades@SOL/USDC"),
        ("bookticker@btc-usdc", "bookTicker@BTC/USDC"),
        ("Kline_1M@SOL/USDC", "kline_1m@SOL/USDC"),
        ("kline_4h.SOL_USDC", "kline_4h@SOL/USDC"),
        ("ticker@SOL/USDC", "ticker@SOL/USDC"),
        ("USER.Orders", "user.orders"),
        ("user.fills", "user.fills"),
        ("user.balances", "user.balances"),
    ],
)
def test_stream_names_parse_to_canonical(raw: str, name: str) -> None:
    stream = parse_stream(raw, MARKETS)
    assert stream.name == name
    assert parse_stream(stream.name, MARKETS) == stream


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("orders@SOL/USDC", "UNKNOWN_STREAM"),
        ("kline_2m@SOL/USDC", "UNKNOWN_STREAM"),
        ("depth", "UNKNOWN_STREAM"),
        ("", "UNKNOWN_STREAM"),
        (17, "UNKNOWN_STREAM"),
        ("x" * 100, "UNKNOWN_STREAM"),
        ("depth@DOGE/USDC", "UNKNOWN_MARKET"),
        ("trades.ETH_USDC", "UNKNOWN_MARKET"),
    ],
)
def test_bad_stream_names(raw: object, code: str) -> None:
    with pytest.raises(StreamError) as err:
        parse_stream(raw, MARKETS)
    assert err.value.code == code


def test_stream_properties() -> None:
    assert Stream("kline_1m", "SOL/USDC").interval == "1m"
    assert Stream("kline_1m", "SOL/USDC").stream_type == "kline"
    assert Stream("user.orders").private


# --- subscriptions ------------------------------------------------------------------------
def test_subscriptions_limit_is_all_or_nothing() -> None:
    subs = Subscriptions()
    assert subs.add("a", ["t1", "t2", "t1"], limit=3) == ["t1", "t2"]
    with pytest.raises(TooManyStreams):
        subs.add("a", ["t3", "t4"], limit=3)
    assert subs.topics_of("a") == {"t1", "t2"}
    assert subs.add("a", ["t2"], limit=2) == []  # already held: no new topic
    subs.add("b", ["t1"], limit=3)
    assert subs.subscribers("t1") == {"a", "b"}
    assert subs.remove("a", ["t1", "zz"]) == ["t1"]
    assert subs.drop("b") == ["t1"]
    assert subs.topics() == ["t2"]
    assert private_topic("user.orders", "7") == "user.orders#7"


# --- book and checksum --------------------------------------------------------------------
def test_checksum_format() -> None:
    bids = [["101.00", "1.000"], ["100.00", "2.500"]]
    asks = [["102.00", "0.500"]]
    text = checksum_string(bids, asks)
    assert text == "b:101.00:1.000,100.00:2.500|a:102.00:0.500"
    assert checksum(bids, asks) == zlib.crc32(text.encode())
    assert checksum_string([], []) == "b:|a:"


def test_book_orders_levels_and_removes_zero() -> None:
    book = LocalBook()
    book.load([["100.00", "1.000"], ["101.00", "1.000"]], [["103.00", "2.000"]])
    book.apply([["99.00", "5.000"], ["101.00", "0.000"]], [["102.00", "1.000"]])
    bids, asks = book.top(10)
    assert bids == [["100.00", "1.000"], ["99.00", "5.000"]]
    assert asks == [["102.00", "1.000"], ["103.00", "2.000"]]
    many = [[f"{p}.00", "1.000"] for p in range(1, 30)]
    book.load(many, [])
    assert book.top(10)[0][0] == ["29.00", "1.000"]
    assert book.checksum() == checksum(book.top(10)[0], [])


def _diff(first: int, last: int, bids=(), asks=()) -> dict:
    return {"market": "SOL/USDC", "U": first, "u": last, "pu": first - 1,
            "bids": [list(b) for b in bids], "asks": [list(a) for a in asks], "ts": 1}


def test_tracker_forwards_continuous_updates_and_merges_empty_batches() -> None:
    t = DepthTracker("SOL/USDC")
    assert t.on_diff(_diff(5, 5)) == []  # buffered until a snapshot
    out = t.on_snapshot({"lastUpdateId": 4, "bids": [["10.00", "1.000"]], "asks": []})
    assert out is not None and out[0]["e"] == "depthSnapshot" and out[0]["lastUpdateId"] == 4
    assert t.last_u == 5  # the buffered batch 5 applied (it changed nothing)
    assert t.on_diff(_diff(6, 6)) == []  # no book change: not forwarded
    [msg] = t.on_diff(_diff(7, 8, bids=[("11.00", "2.000")]))
    assert (msg["U"], msg["u"], msg["pu"]) == (5, 8, 4)  # covers the empty batches 5, 6
    assert msg["c"] == checksum([["11.00", "2.000"], ["10.00", "1.000"]], [])
    assert t.on_diff(_diff(7, 8, bids=[("11.00", "9.000")])) == []  # duplicate: dropped
    [msg] = t.on_diff(_diff(9, 9, asks=[("12.00", "1.000")]))
    assert (msg["U"], msg["u"]) == (9, 9)


def test_tracker_gap_needs_snapshot_and_waits_for_a_fresh_one() -> None:
    t = DepthTracker("SOL/USDC")
    t.on_snapshot({"lastUpdateId": 10, "bids": [["10.00", "1.000"]], "asks": []})
    assert t.on_diff(_diff(13, 13, bids=[("10.00", "3.000")])) == []  # 11..12 lost
    assert not t.live and t.gaps == 1
    # The key still says 10: too old to continue at 13, ask again later.
    assert t.on_snapshot({"lastUpdateId": 10, "bids": [["10.00", "1.000"]], "asks": []}) is None
    t.on_diff(_diff(14, 14, asks=[("11.00", "1.000")]))
    out = t.on_snapshot({"lastUpdateId": 12, "bids": [["10.00", "2.000"]], "asks": []})
    assert out is not None
    assert [m["e"] for m in out] == ["depthSnapshot", "depthUpdate", "depthUpdate"]
    assert out[0]["lastUpdateId"] == 12 and out[0]["reason"] == "resync"
    assert (out[1]["U"], out[2]["u"]) == (13, 14)
    assert t.live and t.book.top(10) == ([["10.00", "3.000"]], [["11.00", "1.000"]])


def test_tracker_forced_snapshot_when_lost_batches_did_not_change_the_book() -> None:
    t = DepthTracker("SOL/USDC")
    t.on_snapshot({"lastUpdateId": 10, "bids": [], "asks": []})
    t.on_diff(_diff(13, 13, bids=[("10.00", "3.000")]))
    out = t.on_snapshot({"lastUpdateId": 10, "bids": [], "asks": []}, force=True)
    assert out is not None and out[0]["lastUpdateId"] == 12 and out[1]["U"] == 13


def test_tracker_engine_restart_with_lower_sequence_resyncs() -> None:
    t = DepthTracker("SOL/USDC")
    t.on_snapshot({"lastUpdateId": 1000, "bids": [], "asks": []})
    for i in range(1, 60):
        t.on_diff(_diff(i, i))
    assert not t.live
    out = t.on_snapshot({"lastUpdateId": 59, "bids": [], "asks": []})
    assert out is not None and t.live and t.last_u == 59


def test_tracker_reset_after_lost_connection() -> None:
    t = DepthTracker("SOL/USDC")
    t.on_snapshot(None)
    assert t.live and t.last_u == 0
    t.reset()
    assert not t.live


# --- klines ---------------------------------------------------------------------------------
SOL = next(s for s in load_markets_yaml((ROOT / "markets.yaml").read_text()) if s.symbol == "SOL/USDC")
FMT = WireFormat(SOL)
_ids = iter(range(1, 10**6))


def _trade(ts: int, price: str, qty: str, trade_id: int | None = None) -> dict:
    quote = Decimal(price) * Decimal(qty)
    return {"tradeId": str(trade_id if trade_id is not None else next(_ids)), "price": price, "quantity": qty,
            "quoteQuantity": str(quote), "ts": ts}


def builder(interval: str = "1m") -> KlineBuilder:
    return KlineBuilder(FMT, interval)


def test_kline_open_updates_and_close() -> None:
    k = builder()
    base = 1_700_000_040_000  # a minute boundary
    [msg] = k.add_trades([_trade(base + 1, "10.00", "1.000"), _trade(base + 2, "12.00", "0.500")])
    assert msg["closed"] is False and msg["openTime"] == base and msg["closeTime"] == base + 59_999
    assert (msg["open"], msg["high"], msg["low"], msg["close"]) == ("10.00", "12.00", "10.00", "12.00")
    assert (msg["volume"], msg["quoteVolume"], msg["count"]) == ("1.500", "16.000000", 2)
    [msg] = k.add_trades([_trade(base + 3, "9.00", "1.000")])
    assert msg["low"] == "9.00" and msg["close"] == "9.00" and msg["count"] == 3
    closed, opened = k.add_trades([_trade(base + 60_000, "11.00", "1.000")])
    assert closed["closed"] is True and closed["count"] == 3
    assert opened["openTime"] == base + 60_000 and opened["open"] == "11.00"
    assert k.add_trades([_trade(base + 5, "1.00", "1.000")]) == []  # late: ignored
    assert k.tick(base + 60_000 + 59_999) == []
    [final] = k.tick(base + 120_000)
    assert final["closed"] and final["openTime"] == base + 60_000
    assert k.tick(base + 180_000) == []


def test_live_kline_equals_the_candle_table_row() -> None:
    """The gateway's candle is dbproc's for the same trades: open and close by trade id, not
    by arrival (a resync can deliver a batch late), integer sums."""
    base = 1_700_000_040_000
    trades = [_trade(base + 3, "11.00", "0.250", 7), _trade(base + 1, "10.00", "1.000", 5),
              _trade(base + 2, "12.00", "0.500", 6)]
    k = builder()
    [msg] = k.add_trades(trades)
    assert (msg["open"], msg["close"]) == ("10.00", "11.00")  # trade 5 opens, trade 7 closes
    [reference] = aggregate("SOL/USDC", parse_trades(trades, FMT), ["1m"]).values()
    assert k.current == reference


def test_weekly_and_daily_klines_use_the_candle_table_buckets() -> None:
    """issue 15: the gateway's candles and dbproc's share one bucket rule
    (cryptex_common.intervals): a week starts Monday 00:00 UTC, not on the epoch's Thursday."""
    wednesday_noon = 1_700_049_600_000  # 2023-11-15T12:00Z, a Wednesday
    monday = 1_699_833_600_000  # 2023-11-13T00:00Z
    [week] = builder("1w").add_trades([_trade(wednesday_noon, "10.00", "1.000")])
    assert (week["openTime"], week["closeTime"]) == (monday, monday + 604_800_000 - 1)
    assert week["openTime"] == bucket_start_ms(wednesday_noon, "1w")
    [day] = builder("1d").add_trades([_trade(wednesday_noon, "10.00", "1.000")])
    assert day["openTime"] == 1_700_006_400_000  # 2023-11-15T00:00Z


def test_kline_without_subscribers_keeps_the_candle_but_builds_no_message() -> None:
    """issue 12: with nobody on an interval the gateway folds trades without building the
    message; a subscriber arriving later still gets the exact candle."""
    trades = [_trade(1_700_000_040_001, "10.00", "1.000"), _trade(1_700_000_040_002, "12.00", "0.500"),
              _trade(1_700_000_040_003, "9.00", "2.000")]
    quiet, loud = builder(), builder()
    assert quiet.fold(parse_trades(trades[:2], FMT), report=False) == []
    assert quiet.fold(parse_trades(trades[2:], FMT), report=False) == []
    expected = loud.add_trades(trades)
    assert quiet.current == loud.current
    assert quiet.current is not None
    assert [quiet.message()] == expected


# --- protocol -----------------------------------------------------------------------------
def test_parse_request() -> None:
    req = parse_request('{"method":"subscribe","params":["depth@SOL/USDC"],"id":3}')
    assert (req.method, req.params, req.id) == ("SUBSCRIBE", ["depth@SOL/USDC"], 3)
    assert parse_request('{"method":"LIST_SUBSCRIPTIONS","id":"a"}').id == "a"


@pytest.mark.parametrize(
    ("text", "code", "rid"),
    [
        ("not json", "INVALID_JSON", None),
        ("[1,2]", "BAD_REQUEST", None),
        ('{"method":"FOO","id":4}', "UNKNOWN_METHOD", 4),
        ('{"id":5}', "UNKNOWN_METHOD", 5),
        ('{"method":"SUBSCRIBE","params":"depth@SOL/USDC","id":6}', "BAD_REQUEST", 6),
        ('{"method":"SUBSCRIBE","params":[],"id":7}', "BAD_REQUEST", 7),
        ('{"method":"SUBSCRIBE","params":[1],"id":true}', "BAD_REQUEST", None),
        ('{"method":"AUTH","params":{"apiKey":"k"},"id":8}', "BAD_REQUEST", 8),
    ],
)
def test_bad_requests(text: str, code: str, rid: object) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_request(text)
    assert (err.value.code, err.value.request_id) == (code, rid)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(0.5) and not bucket.allow(0.5)


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_text_frame_encoding(size: int) -> None:
    payload = orjson.dumps("x" * max(0, size - 2)) if size >= 2 else b"1" * size
    frame = encode_text_frame(payload)
    assert frame[0] == 0x81
    n = frame[1]
    if n < 126:
        assert n == len(payload) and frame[2:] == payload
    elif n == 126:
        assert int.from_bytes(frame[2:4], "big") == len(payload) and frame[4:] == payload
    else:
        assert int.from_bytes(frame[2:10], "big") == len(payload) and frame[10:] == payload

"""Hostile and malformed input on `/ws`, against a real gateway on real Redis.

Issue 11 defect 7 (second part): bad WS AUTH input must get an error and a proper close frame.
Every case below gets an error reply that names the offending field (or frame) and, where
docs/websocket.md says the socket is closed, a close frame with a code; never an unhandled
exception or a traceback in the logs, never a TCP connection dropped without a close frame.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.support.eventually import eventually
from tests.wsgateway.conftest import (
    GatewayUnderTest,
    auth_params,
    client_frame,
    create_user,
    raw_ws_connect,
    recv,
    request,
)

FRAME_LIMIT = 16_384  # the production default, so 5,000-deep JSON fits in one frame


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def hgw(make_gateway: Any, caplog: pytest.LogCaptureFixture) -> Any:
    """A gateway with the production frame limit; after the test, no log record may carry a
    traceback or be an ERROR (an unhandled exception shows up as one of those)."""
    caplog.set_level(logging.WARNING)
    gw = await make_gateway(max_frame_bytes=FRAME_LIMIT, rate_burst=200, rate_per_s=200)
    yield gw
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [(r.name, r.getMessage(), r.exc_text) for r in bad]


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int) -> str:
    """The next message is a close frame with `code` (not an abrupt end); returns its reason."""
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert ws.close_code == code, (ws.close_code, msg.extra)
    return str(msg.extra)


async def still_open(ws: aiohttp.ClientWebSocketResponse) -> None:
    assert await request(ws, "PING", rid="still") == {"id": "still", "result": "pong"}


def hex_sig(ch: str = "a") -> str:
    return ch * 64


BAD_AUTH_PARAMS: list[tuple[str, Any, str]] = [
    # (case, params, the field the error must name)
    ("params is a string", "apiKey=k", "params"),
    ("params is a list", ["k", 1, "s"], "params"),
    ("params is null", None, "params"),
    ("params is a number", 7, "params"),
    ("params empty", {}, "apiKey"),
    ("apiKey missing", {"timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("timestamp missing", {"apiKey": "key-1", "signature": hex_sig()}, "timestamp"),
    ("signature missing", {"apiKey": "key-1", "timestamp": 1}, "signature"),
    ("apiKey number", {"apiKey": 12345, "timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("apiKey null", {"apiKey": None, "timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("apiKey list", {"apiKey": ["key-1"], "timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("apiKey huge", {"apiKey": "k" * 12_000, "timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("apiKey empty", {"apiKey": "", "timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("apiKey non-ASCII", {"apiKey": "ключ-🔑", "timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("apiKey control chars", {"apiKey": "key\x00\n", "timestamp": 1, "signature": hex_sig()}, "apiKey"),
    ("timestamp superscript two", {"apiKey": "key-1", "timestamp": "²", "signature": hex_sig()}, "timestamp"),
    ("timestamp Arabic-Indic digits", {"apiKey": "key-1", "timestamp": "\u0661\u0667\u0660\u0660",
                                       "signature": hex_sig()}, "timestamp"),
    ("timestamp 5000 digits", {"apiKey": "key-1", "timestamp": "9" * 5000, "signature": hex_sig()}, "timestamp"),
    ("timestamp bool", {"apiKey": "key-1", "timestamp": True, "signature": hex_sig()}, "timestamp"),
    ("timestamp float", {"apiKey": "key-1", "timestamp": 1.7e12, "signature": hex_sig()}, "timestamp"),
    ("timestamp empty", {"apiKey": "key-1", "timestamp": "", "signature": hex_sig()}, "timestamp"),
    ("timestamp negative", {"apiKey": "key-1", "timestamp": -5, "signature": hex_sig()}, "timestamp"),
    ("timestamp object", {"apiKey": "key-1", "timestamp": {"ms": 1}, "signature": hex_sig()}, "timestamp"),
    ("signature number", {"apiKey": "key-1", "timestamp": 1, "signature": 123}, "signature"),
    ("signature list", {"apiKey": "key-1", "timestamp": 1, "signature": ["ab"]}, "signature"),
    ("signature bytes-ish", {"apiKey": "key-1", "timestamp": 1, "signature": {"hex": "ab"}}, "signature"),
    ("signature non-hex", {"apiKey": "key-1", "timestamp": 1, "signature": "zz" * 32}, "signature"),
    ("signature short", {"apiKey": "key-1", "timestamp": 1, "signature": "abcd"}, "signature"),
    ("signature huge", {"apiKey": "key-1", "timestamp": 1, "signature": "a" * 12_000}, "signature"),
]


@pytest.mark.parametrize(("case", "params", "field"), BAD_AUTH_PARAMS, ids=[c[0] for c in BAD_AUTH_PARAMS])
async def test_malformed_auth_gets_an_error_naming_the_field_then_close_1008(
    hgw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis,
    case: str, params: Any, field: str,
) -> None:
    """issue 11 defect 7: hostile AUTH params: error BAD_REQUEST naming the field, close 1008."""
    await create_user(redis_client, "1")
    async with session.ws_connect(hgw.ws_url) as ws:
        await ws.send_str(orjson.dumps({"method": "AUTH", "id": 5, "params": params}).decode())
        reply = await recv(ws)
        assert reply["id"] == 5 and reply["error"]["code"] == "BAD_REQUEST", (case, reply)
        assert field in reply["error"]["message"], (case, reply)
        assert len(reply["error"]["message"]) < 200  # never echoes a huge value back
        assert "auth failed" in await expect_close(ws, 1008)
    await eventually(lambda: not hgw.gateway.conns, 5, interval_s=0.01)  # the server side is gone too


async def test_fresh_timestamp_with_non_ascii_signature_is_refused_not_crashing(
    hgw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """issue 11 defect 7: a known key, a fresh timestamp and a 64-character non-ASCII
    signature once reached hmac.compare_digest, which raises on non-ASCII text."""
    key, _secret = await create_user(redis_client, "1")
    for sig in ("é" * 64, "\uff41" * 64, "\x00" * 64):
        async with session.ws_connect(hgw.ws_url) as ws:
            reply = await request(ws, "AUTH", {"apiKey": key, "timestamp": now_ms(), "signature": sig}, 1)
            assert reply["error"]["code"] == "BAD_REQUEST" and "signature" in reply["error"]["message"]
            await expect_close(ws, 1008)


async def test_rejected_credentials_get_an_error_then_close_1008(
    hgw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """issue 11 defect 7: a failed AUTH is final for the socket: the error, then close 1008."""
    key, secret = await create_user(redis_client, "1")
    good = auth_params(key, secret)
    cases = [
        ({**good, "signature": "00" * 32}, "BAD_SIGNATURE"),
        (auth_params(key, "not-the-secret"), "BAD_SIGNATURE"),
        (auth_params(key, secret, ts=now_ms() - 60_000), "STALE_TIMESTAMP"),
        (auth_params(key, secret, ts=now_ms() + 60_000), "STALE_TIMESTAMP"),
        (auth_params("nobody", secret), "UNAUTHORIZED"),
        ({**auth_params(key, secret), "timestamp": str(good["timestamp"] + 1)}, "BAD_SIGNATURE"),
    ]
    for params, code in cases:
        async with session.ws_connect(hgw.ws_url) as ws:
            reply = await request(ws, "AUTH", params, 3)
            assert reply["id"] == 3 and reply["error"]["code"] == code, (params, reply)
            assert f"auth failed: {code}" in await expect_close(ws, 1008)
    async with session.ws_connect(hgw.ws_url) as ws:  # the good one works, once
        assert await request(ws, "AUTH", good, 4) == {"id": 4, "result": {"userId": "1"}}
        await still_open(ws)
    async with session.ws_connect(hgw.ws_url) as ws:
        assert (await request(ws, "AUTH", good, 5))["error"]["code"] == "REPLAYED_REQUEST"
        await expect_close(ws, 1008)
    # a timestamp written as a decimal string is the same timestamp
    ts = now_ms()
    params = {**auth_params(key, secret, ts=ts), "timestamp": str(ts)}
    async with session.ws_connect(hgw.ws_url) as ws:
        assert (await request(ws, "AUTH", params, 6))["result"] == {"userId": "1"}


async def test_auth_as_another_user_on_an_authenticated_socket_is_refused_and_closed(
    hgw: GatewayUnderTest, session: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    k1, s1 = await create_user(redis_client, "1")
    k2, s2 = await create_user(redis_client, "2")
    async with session.ws_connect(hgw.ws_url) as ws:
        assert (await request(ws, "AUTH", auth_params(k1, s1), 1))["result"] == {"userId": "1"}
        reply = await request(ws, "AUTH", auth_params(k2, s2), 2)
        assert reply["error"]["code"] == "FORBIDDEN"
        await expect_close(ws, 1008)


BAD_REQUESTS: list[tuple[str, str, str, str]] = [
    # (case, text frame, error code, what the message names); the socket stays open
    ("not JSON", "this is not json", "INVALID_JSON", "JSON"),
    ("empty frame", "", "INVALID_JSON", "JSON"),
    ("truncated JSON", '{"method": "PING", "id": 1', "INVALID_JSON", "JSON"),
    ("nested 5000 deep", "[" * 5000 + "]" * 5000, "INVALID_JSON", "JSON"),
    ("object nested 2000 deep", '{"a":' * 2000 + "1" + "}" * 2000, "INVALID_JSON", "JSON"),
    ("number too big for a double", '{"method": "PING", "id": 1e400}', "INVALID_JSON", "JSON"),
    ("NaN literal", '{"method": "PING", "id": NaN}', "INVALID_JSON", "JSON"),
    ("lone surrogate", '{"method": "PING", "id": "\\ud800"}', "INVALID_JSON", "JSON"),
    ("a list", '[{"method": "PING"}]', "BAD_REQUEST", "object"),
    ("a number", "42", "BAD_REQUEST", "object"),
    ("a string", '"PING"', "BAD_REQUEST", "object"),
    ("null", "null", "BAD_REQUEST", "object"),
    ("unknown method", '{"method": "DANCE", "id": 1}', "UNKNOWN_METHOD", "method"),
    ("no method", '{"id": 1}', "UNKNOWN_METHOD", "method"),
    ("method number", '{"method": 7, "id": 1}', "UNKNOWN_METHOD", "method"),
    ("method huge", '{"method": "' + "X" * 12_000 + '", "id": 1}', "UNKNOWN_METHOD", "method"),
    ("method nested 1000 deep", '{"method": ' + "[" * 1000 + "]" * 1000 + ', "id": 1}', "UNKNOWN_METHOD", "method"),
    ("id float", '{"method": "PING", "id": 1.5}', "BAD_REQUEST", "id"),
    ("id integer over 64 bits (parsed as a float)", '{"method": "PING", "id": 123456789012345678901234567890}',
     "BAD_REQUEST", "id"),
    ("id bool", '{"method": "PING", "id": true}', "BAD_REQUEST", "id"),
    ("id list", '{"method": "PING", "id": [1]}', "BAD_REQUEST", "id"),
    ("id object", '{"method": "PING", "id": {"n": 1}}', "BAD_REQUEST", "id"),
    ("id long string", '{"method": "PING", "id": "' + "i" * 100 + '"}', "BAD_REQUEST", "id"),
    ("id nested 1000 deep", '{"method": "PING", "id": ' + "[" * 1000 + "]" * 1000 + "}", "BAD_REQUEST", "id"),
    ("subscribe params string", '{"method": "SUBSCRIBE", "params": "depth@SOL/USDC", "id": 1}',
     "BAD_REQUEST", "params"),
    ("subscribe params numbers", '{"method": "SUBSCRIBE", "params": [1, 2], "id": 1}', "BAD_REQUEST", "params"),
    ("subscribe params empty", '{"method": "SUBSCRIBE", "params": [], "id": 1}', "BAD_REQUEST", "params"),
    ("subscribe 101 params", orjson.dumps({"method": "SUBSCRIBE", "id": 1, "params": ["trades@SOL/USDC"] * 101})
     .decode(), "BAD_REQUEST", "params"),
    ("subscribe huge stream name", orjson.dumps({"method": "SUBSCRIBE", "id": 1, "params": ["d" * 12_000]}).decode(),
     "UNKNOWN_STREAM", "stream"),
    ("subscribe non-ASCII stream", '{"method": "SUBSCRIBE", "params": ["depth@СОЛ/USDC"], "id": 1}',
     "UNKNOWN_MARKET", "market"),
    ("unsubscribe params object", '{"method": "UNSUBSCRIBE", "params": {"a": 1}, "id": 1}', "BAD_REQUEST", "params"),
]


@pytest.mark.parametrize(("case", "text", "code", "names"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_malformed_requests_get_an_error_and_the_socket_carries_on(
    hgw: GatewayUnderTest, session: aiohttp.ClientSession, case: str, text: str, code: str, names: str,
) -> None:
    """issue 11 defect 7: malformed requests: an error naming the field, the socket stays usable."""
    async with session.ws_connect(hgw.ws_url) as ws:
        await ws.send_str(text)
        reply = await recv(ws)
        assert reply["error"]["code"] == code, (case, reply)
        assert names in reply["error"]["message"], (case, reply)
        assert len(reply["error"]["message"]) < 300
        assert reply["id"] in (None, 1)
        await still_open(ws)


async def test_binary_frame_gets_an_error_then_close_1003(
    hgw: GatewayUnderTest, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(hgw.ws_url) as ws:
        await ws.send_bytes(b'{"method": "PING", "id": 1}')
        reply = await recv(ws)
        assert reply["error"]["code"] == "BAD_FRAME" and "binary" in reply["error"]["message"]
        await expect_close(ws, 1003)


async def test_frame_over_the_limit_gets_an_error_then_close_1009(
    hgw: GatewayUnderTest, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(hgw.ws_url) as bystander:
        async with session.ws_connect(hgw.ws_url) as ws:
            await ws.send_str('{"method":"PING","id":1,"pad":"' + "x" * FRAME_LIMIT + '"}')
            reply = await recv(ws)
            assert reply["error"]["code"] == "FRAME_TOO_BIG" and "frame" in reply["error"]["message"]
            assert f"frame over {FRAME_LIMIT} bytes" in await expect_close(ws, 1009)
        async with session.ws_connect(hgw.ws_url) as ws:  # far over: refused by the reader itself
            await ws.send_str("x" * (8 * FRAME_LIMIT))
            await expect_close(ws, 1009)
        await still_open(bystander)


def read_server_frame(s: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of the next unmasked server frame."""
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed without a close frame")
            buf += chunk
        return buf

    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    return b0 & 0x0F, exact(n)


def raw_frame(opcode: int, payload: bytes) -> bytes:
    frame = bytearray(client_frame(payload))
    frame[0] = 0x80 | opcode
    return bytes(frame)


@pytest.mark.parametrize(("case", "frame", "code"), [
    ("invalid UTF-8 in a text frame", raw_frame(0x1, b'{"method": "\xff\xfe"}'), 1007),
    ("a reserved opcode", raw_frame(0x3, b"{}"), 1002),
    ("a frame claiming 2**62 bytes", bytes((0x81, 0xFF)) + (2**62).to_bytes(8, "big") + b"\0\0\0\0", 1009),
])
async def test_protocol_violations_get_a_close_frame_with_a_code(
    hgw: GatewayUnderTest, case: str, frame: bytes, code: int
) -> None:
    """What never reaches the JSON layer: aiohttp's reader answers with a close frame."""
    def run() -> tuple[int, bytes]:
        s = raw_ws_connect(hgw.port)
        try:
            s.settimeout(5)
            s.sendall(frame)
            return read_server_frame(s)
        finally:
            s.close()

    opcode, payload = await asyncio.to_thread(run)
    assert opcode == 0x8, (case, opcode, payload)
    assert int.from_bytes(payload[:2], "big") == code, (case, payload)

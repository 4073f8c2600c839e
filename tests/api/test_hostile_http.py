"""Issue 11 defect 9, over real sockets: hostile headers, query values and bodies against the
API process (real Redis, real engines). Every answer is a 4xx naming the field, never a 500;
/metrics lives on the ops port; 405 names the allowed methods; slow-header connections are
closed; a connection cap holds."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Iterator

import orjson
import pytest

from cryptex_client import CryptexClient
from cryptex_common.auth import sign
from cryptex_launcher.stack import Stack
from tests.api.conftest import api_stack, raw_request
from tests.e2e.conftest import ADMIN

HEADER_TIMEOUT_S = 1
MAX_CONNECTIONS = 40
SUP2 = "²".encode()  # isdigit() is True for it, int() refuses it


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with api_stack(CRYPTEX_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                   CRYPTEX_MAX_CONNECTIONS=str(MAX_CONNECTIONS)) as running:
        yield running


@pytest.fixture(scope="module")
def user(stack: Stack) -> tuple[str, str]:
    async def make() -> tuple[str, str]:
        async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin:
            made = await admin.new_funded_user({"USDC": "1000"})
            assert made.api_key and made.api_secret
            return made.api_key, made.api_secret
    return asyncio.run(make())


def signed(user: tuple[str, str], method: str, target: str, body: bytes = b"",
           **override: bytes) -> list[tuple[bytes, bytes]]:
    key, secret = user
    ts = str(int(time.time() * 1000))
    headers = {"X-CX-KEY": key.encode(), "X-CX-TS": ts.encode(),
               "X-CX-SIGN": sign(secret, ts, method, target, body).encode()}
    headers.update({k.replace("_", "-"): v for k, v in override.items()})
    return [(k.encode(), v) for k, v in headers.items()]


NESTED = b"[" * 5000 + b"]" * 5000
ADMIN_AUTH = (b"Authorization", b"Bearer " + ADMIN.encode())


def hostile_cases(user: tuple[str, str]) -> list[tuple[str, str, str, list[tuple[bytes, bytes]], bytes, str]]:
    """(name, method, target, headers, body, field the answer must name)."""
    bal, order = "/api/v1/balances", "/api/v1/order"
    return [
        ("ts superscript two", "GET", bal, signed(user, "GET", bal, X_CX_TS=SUP2), b"", "X-CX-TS"),
        ("ts 5000 digits", "GET", bal, signed(user, "GET", bal, X_CX_TS=b"9" * 5000), b"", "X-CX-TS"),
        ("sign not utf-8", "GET", bal, signed(user, "GET", bal, X_CX_SIGN=b"\xff\xfe" * 32), b"", "X-CX-SIGN"),
        ("sign non-ascii", "GET", bal, signed(user, "GET", bal, X_CX_SIGN="é".encode() * 32), b"", "X-CX-SIGN"),
        ("key not utf-8", "GET", bal, signed(user, "GET", bal, X_CX_KEY=b"\xff" * 32), b"", "X-CX-KEY"),
        ("authorization not utf-8", "POST", "/api/v1/admin/users",
         [(b"Authorization", b"Bearer \xff\xfe")], b"", "Authorization"),
        ("request id not utf-8", "GET", "/api/v1/time", [(b"X-Request-Id", b"\xff\xfe")], b"", "X-Request-Id"),
        ("request id too long", "GET", "/api/v1/time", [(b"X-Request-Id", b"a" * 500)], b"", "X-Request-Id"),
        ("depth limit superscript", "GET", "/api/v1/depth?market=SOL/USDC&limit=%C2%B2", [], b"", "limit"),
        ("depth limit 5000 digits", "GET", "/api/v1/depth?market=SOL/USDC&limit=" + "9" * 5000, [], b"",
         "limit"),
        ("trades limit superscript", "GET", "/api/v1/trades?market=SOL/USDC&limit=%C2%B2", [], b"", "limit"),
        ("depth limit newline", "GET", "/api/v1/depth?market=SOL/USDC&limit=5%0A", [], b"", "limit"),
        ("market not utf-8", "GET", "/api/v1/ticker?market=%FF%FE", [], b"", "market"),
        ("orderId superscript", "GET", order + "?orderId=%C2%B2",
         signed(user, "GET", order + "?orderId=%C2%B2"), b"", "orderId"),
        ("order body nested 5000", "POST", order, signed(user, "POST", order, NESTED), NESTED, "body"),
        ("deposit body nested 5000", "POST", "/api/v1/admin/deposit", [ADMIN_AUTH], NESTED, "body"),
        ("deposit amount 5000 digits", "POST", "/api/v1/admin/deposit", [ADMIN_AUTH],
         b'{"userId":"1","asset":"USDC","txId":"t1","amount":' + b"9" * 5000 + b"}", "amount"),
        ("deposit amount off grid past 28 digits", "POST", "/api/v1/admin/deposit", [ADMIN_AUTH],
         b'{"userId":"1","asset":"USDC","txId":"t2","amount":"1.0000000000000000000000000001"}', "amount"),
        ("deposit userId an object", "POST", "/api/v1/admin/deposit", [ADMIN_AUTH],
         b'{"userId":{"a":1},"asset":"USDC","txId":"t3","amount":"1"}', "userId"),
    ]


async def test_hostile_values_are_4xx_naming_the_field(stack: Stack, user: tuple[str, str]) -> None:
    """issue 11 defect 9: each of these was a 500 with a traceback (or passed validation)."""
    failures = []
    for name, method, target, headers, body, field in hostile_cases(user):
        r = await raw_request(stack.api_port, method, target, headers, body)
        doc = r.json() if r.body.startswith(b"{") else {}
        if not (400 <= r.status < 500 and doc.get("field") == field):
            failures.append((name, r.status, r.body[:200]))
    assert not failures, "\n".join(map(repr, failures))
    assert "Traceback" not in stack.log_text("api")


async def test_a_trailing_newline_in_an_order_is_refused(stack: Stack, user: tuple[str, str]) -> None:
    """issue 11 defect 9: `clientOrderId: "abc\\n"` and `price: "10\\n"` passed validation."""
    for change, field in (({"clientOrderId": "abc\n"}, "clientOrderId"), ({"price": "10\n"}, "price")):
        body = {"side": "buy", "type": "limit", "price": "10", "quantity": "1", "market": "SOL/USDC",
                **change}
        import orjson
        raw = orjson.dumps(body)
        r = await raw_request(stack.api_port, "POST", "/api/v1/order",
                              signed(user, "POST", "/api/v1/order", raw), raw)
        assert (r.status, r.json().get("field")) == (400, field), r


async def test_405_names_the_allowed_methods(stack: Stack) -> None:
    """issue 11 defect 9: 405 without `Allow`."""
    r = await raw_request(stack.api_port, "PUT", "/api/v1/order")
    assert r.status == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST", "DELETE"}
    assert r.json()["code"] == "METHOD_NOT_ALLOWED"


async def test_metrics_are_served_on_the_ops_port_only(stack: Stack) -> None:
    """issue 11 defect 9: /metrics was public on the API port."""
    r = await raw_request(stack.api_port, "GET", "/metrics")
    assert r.status == 404
    ops_port = stack.services["api"].ops_port
    assert ops_port and ops_port != stack.api_port
    with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=5) as resp:
        assert b"cryptex_http_requests_total" in resp.read()
    for path in ("/healthz", "/readyz"):  # probes: on both ports
        assert (await raw_request(stack.api_port, "GET", path)).status == 200
        assert (await raw_request(ops_port, "GET", path)).status == 200


async def _closed_within(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         bound_s: float) -> bool:
    """Trickle header bytes until the server closes the connection or `bound_s` passes."""
    deadline = time.monotonic() + bound_s
    with contextlib.suppress(ConnectionError):
        while time.monotonic() < deadline:
            writer.write(b"X")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1024), 0.3) == b"":
                    return True
    return reader.at_eof() or writer.is_closing()


@pytest.mark.parametrize("target, headers", [
    ("/api/v1/orders/history?limit=" + "9" * 9000, []),  # request line over aiohttp's 8190 bytes
    ("/api/v1/time", [(b"X-Big", b"x" * 9000)]),  # a header line over it
    ("/api/v1/time\x00", []),  # not a valid request target
])
async def test_requests_aiohttp_cannot_parse_get_a_json_4xx(stack: Stack, target: str,
                                                          headers: list[tuple[bytes, bytes]]) -> None:
    """A request the HTTP parser refuses (schemathesis found an 8 KB query answered 400
    text/plain, echoing the request) is the API's JSON 400, naming the request, echoing nothing."""
    r = await raw_request(stack.api_port, "GET", target, headers=headers)
    assert r.status == 400 and r.headers["content-type"].startswith("application/json")
    body = orjson.loads(r.body)
    assert body["code"] == "BAD_REQUEST" and body["field"] == "request"
    assert b"999" not in r.body and b"xxx" not in r.body
    assert (await raw_request(stack.api_port, "GET", "/api/v1/time")).status == 200


async def test_slow_header_connections_are_closed(stack: Stack) -> None:
    """issue 11 defect 9: 500 slow-header connections stayed open 30 s. Here 30 connections
    trickle a header byte every 0.3 s; the header-read timeout (1 s) must close each well
    within a generous 15 s."""
    conns = []
    for _ in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.api_port)
        writer.write(b"GET /api/v1/time HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conns.append((reader, writer))
    closed = await asyncio.gather(*[_closed_within(r, w, 15) for r, w in conns])
    for _, writer in conns:
        writer.close()
    assert all(closed), f"{closed.count(False)} of {len(closed)} slow connections still open"
    assert (await raw_request(stack.api_port, "GET", "/api/v1/time")).status == 200


async def test_connections_over_the_cap_are_refused(stack: Stack) -> None:
    """issue 11 defect 9: a connection cap. With MAX_CONNECTIONS idle sockets open, one more
    gets 503 and is closed; once they go, requests are served again."""
    await asyncio.sleep(HEADER_TIMEOUT_S + 0.5)  # earlier tests' connections are gone
    idle = [await asyncio.open_connection("127.0.0.1", stack.api_port) for _ in range(MAX_CONNECTIONS)]
    try:
        r = await raw_request(stack.api_port, "GET", "/api/v1/time", timeout_s=5)
        assert r.status == 503 and r.headers.get("retry-after")
    finally:
        for _, writer in idle:
            writer.close()
    await asyncio.sleep(0.5)
    assert (await raw_request(stack.api_port, "GET", "/api/v1/time")).status == 200

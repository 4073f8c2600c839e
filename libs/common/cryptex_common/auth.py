"""Request signing, shared by the API, the WebSocket gateway and the Python client.

X-CX-SIGN = hex HMAC-SHA256(secret, ts + METHOD + path-with-query + body), ts in ms since
the epoch, accepted within +/- TIMESTAMP_WINDOW_MS of the server clock. A signature is
accepted once: servers remember it (Redis `sig:<signature>`) for the window.
WebSocket AUTH signs ts + "GET" + "/ws" with an empty body.

Users live in Redis: `user:<id>` hash {apiKey, apiSecret, createdMs}; `apikey:<key>` -> id.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_WINDOW_MS = 5_000
# A timestamp is accepted from window ms behind to window ms ahead of the server clock, so
# one signature can be presented over 2 * window ms: its replay guard lives that long.
REPLAY_GUARD_MS = 2 * TIMESTAMP_WINDOW_MS
WS_AUTH_PATH = "/ws"


def sign(secret: str, ts_ms: int | str, method: str, path_with_query: str, body: bytes | str = b"") -> str:
    payload = f"{ts_ms}{method.upper()}{path_with_query}".encode()
    payload += body.encode() if isinstance(body, str) else body
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def signature_matches(
    secret: str, ts_ms: int | str, method: str, path_with_query: str, body: bytes | str,
    signature: str,
) -> bool:
    return hmac.compare_digest(sign(secret, ts_ms, method, path_with_query, body), signature)


def timestamp_fresh(ts_ms: int, now_ms: int) -> bool:
    return abs(now_ms - ts_ms) <= TIMESTAMP_WINDOW_MS

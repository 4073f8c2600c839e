"""Validate facade responses against Binance's published OpenAPI spec (spec/spot_api.yaml,
binance/binance-api-swagger, MIT), with jsonschema.

Every response the tests' real clients receive is recorded (`Recorder`) and checked here:
the 2xx body against the path's response schema, an error body against the status's
schema or, where the spec lists no such status (429, 503, 401 on most paths), against its
`error` schema. Where the spec itself is wrong, it is patched before use, and each patch
is listed in SPEC_FIXES with its reason (docs/binance-compat.md repeats them).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import orjson
import yaml

SPEC_PATH = Path(__file__).parent / "spec" / "spot_api.yaml"
JSON = "application/json"


def _ok_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return doc["paths"][path][method]["responses"]["200"]["content"][JSON]["schema"]


def _fix_order_oneof(doc: dict[str, Any]) -> None:
    """POST /api/v3/order: `oneOf` [ack, result, full] with open objects: a FULL answer
    also matches RESULT and ACK, so no valid FULL answer can pass `oneOf`. -> `anyOf`."""
    schema = _ok_schema(doc, "/api/v3/order", "post")
    schema["anyOf"] = schema.pop("oneOf")


_FILTER_FIELDS = {
    "PRICE_FILTER": ["minPrice", "maxPrice", "tickSize"],
    "LOT_SIZE": ["minQty", "maxQty", "stepSize"],
    "MARKET_LOT_SIZE": ["minQty", "maxQty", "stepSize"],
    "MIN_NOTIONAL": ["minNotional", "applyToMarket", "avgPriceMins"],
    "NOTIONAL": ["minNotional", "applyMinToMarket", "maxNotional", "applyMaxToMarket", "avgPriceMins"],
}


def _fix_filters(doc: dict[str, Any]) -> None:
    """exchangeInfo: every symbol filter is given PRICE_FILTER's schema (minPrice, maxPrice
    and tickSize required), so no real answer validates (LOT_SIZE has none of them). ->
    one schema per filterType, with the fields Binance's documentation lists for it."""
    symbol = _ok_schema(doc, "/api/v3/exchangeInfo", "get")["properties"]["symbols"]["items"]
    symbol["properties"]["filters"]["items"] = {"anyOf": [
        {"type": "object", "required": ["filterType", *fields],
         "properties": {"filterType": {"enum": [name]}, **{f: {"type": ["string", "boolean", "integer"]}
                                                             for f in fields}}}
        for name, fields in _FILTER_FIELDS.items()]}


def _fix_agg_trade_time(doc: dict[str, Any]) -> None:
    """aggTrade `T` (the trade time, ms) is typed boolean, though its own description and
    example say timestamp (1498793709153). -> integer."""
    doc["components"]["schemas"]["aggTrade"]["properties"]["T"] = {"type": "integer", "format": "int64"}


SPEC_FIXES = [_fix_order_oneof, _fix_filters, _fix_agg_trade_time]


@functools.cache
def spec() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(SPEC_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for fix in SPEC_FIXES:
        fix(doc)
    return doc


def response_schema(method: str, path: str, status: int) -> dict[str, Any]:
    doc = spec()
    op = doc["paths"].get(path, {}).get(method.lower())
    if op is None:
        raise AssertionError(f"the spec has no {method} {path}")
    listed = op["responses"].get(str(status))
    if listed is not None and JSON in listed.get("content", {}):
        return listed["content"][JSON]["schema"]
    if status >= 400:
        return {"$ref": "#/components/schemas/error"}
    raise AssertionError(f"the spec lists no {status} answer for {method} {path}")


def errors(method: str, path: str, status: int, body: Any) -> list[str]:
    """The schema violations of one answer (empty when it validates)."""
    doc = spec()
    schema = {**response_schema(method, path, status)}
    root = {"components": doc["components"], "paths": doc["paths"], **schema}
    validator = jsonschema.Draft4Validator(root)
    return [f"{method} {path} {status}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(body)]


@dataclass
class Recorder:
    """Facade answers seen by the clients: (method, path, status, parsed body)."""

    seen: list[tuple[str, str, int, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, url: str, status: int, body: bytes | str | None) -> None:
        path = urlsplit(url).path
        if not path.startswith("/api/v3/"):
            return
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = body
        with self.lock:
            self.seen.append((method.upper(), path, status, parsed))

    def drain(self) -> list[tuple[str, str, int, Any]]:
        with self.lock:
            out, self.seen = self.seen, []
        return out

    def check(self) -> int:
        """Validate and forget every recorded answer; the number checked."""
        seen = self.drain()
        problems = [p for m, path, status, body in seen for p in errors(m, path, status, body)]
        assert not problems, "\n".join(problems[:20])
        return len(seen)


RECORDER = Recorder()

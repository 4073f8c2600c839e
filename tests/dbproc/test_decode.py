"""The decode fast path (orjson + a shape check derived from the models) accepts only what
pydantic accepts and gives exactly pydantic's dump; everything else is left to pydantic."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from cryptex_common.messages import EVENT_BATCH_ADAPTER
from cryptex_dbproc.decode import FAST_PATH, Decoded, Malformed, decode_entry, fast_validate
from tests.dbproc.support import SOL, BatchGen


def dumps(batch: dict[str, Any]) -> bytes:
    return json.dumps(batch).encode()  # orjson cannot write integers beyond 64 bits


def pydantic_dump(raw: bytes) -> dict[str, Any] | None:
    try:
        return EVENT_BATCH_ADAPTER.validate_json(raw).model_dump(mode="json", by_alias=True)
    except ValidationError:
        return None


def varied_batch(rnd: random.Random) -> dict[str, Any]:
    """An engine-like batch with optional order fields present, absent or null."""
    batch = BatchGen(SOL, seed=rnd.randint(1, 99)).batch(rnd.randint(1, 4))
    for event in batch["events"]:
        if event["type"] != "order":
            continue
        order = event["order"]
        for key, value in (("postOnly", True), ("reason", "stp\ttab\\slash"),
                           ("clientOrderId", "c-1\n"), ("quoteBudgetUnits", 10**15),
                           ("priceTicks", None), ("executedLots", 0)):
            choice = rnd.random()
            if choice < 0.3:
                order[key] = value
            elif choice < 0.5:
                order.pop(key, None)
            elif choice < 0.6 and key not in ("postOnly", "executedLots"):
                order[key] = None
    return batch


def test_the_schema_is_supported() -> None:
    assert FAST_PATH, "a change to EventBatch disabled the decode fast path"


def test_valid_batches_give_exactly_the_pydantic_dump() -> None:
    rnd = random.Random(1)
    for _ in range(300):
        raw = dumps(varied_batch(rnd))
        expected = pydantic_dump(raw)
        assert expected is not None
        assert fast_validate(raw) == expected


# Values pydantic may coerce or refuse; the fast path must refuse them all (or, for a
# value of the exact type, give pydantic's result).
ODD_VALUES: list[Any] = [
    True, False, 1.0, 1.5, "7", "buy", "BUY", "trade", "order", None, 2**64, -(2**63),
    2**63, [], {}, "", "\u0000", "filled", "GTC", 0,
]


def mutate(batch: dict[str, Any], rnd: random.Random) -> None:
    """One random change somewhere in the batch."""
    path: list[Any] = []
    node: Any = batch
    while isinstance(node, (dict, list)) and node and (not path or rnd.random() < 0.75):
        key = rnd.choice(list(node)) if isinstance(node, dict) else rnd.randrange(len(node))
        path.append(key)
        parent, node = node, node[key]
    if not path:
        return
    *_, key = path
    action = rnd.random()
    if isinstance(parent, dict) and action < 0.15:
        del parent[key]
    elif isinstance(parent, dict) and action < 0.25:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
        parent[snake if snake != key else key + "_x"] = parent.pop(key)
    elif isinstance(parent, dict) and action < 0.3:
        parent["extra"] = 1
    else:
        parent[key] = rnd.choice(ODD_VALUES)


def test_fuzzed_batches_are_refused_or_exactly_the_pydantic_dump() -> None:
    rnd = random.Random(2)
    accepted_fast = refused = 0
    for _ in range(3000):
        batch = varied_batch(rnd)
        for _ in range(rnd.randint(1, 3)):
            mutate(batch, rnd)
        raw = dumps(batch)
        got, expected = fast_validate(raw), pydantic_dump(raw)
        if got is not None:
            accepted_fast += 1
            assert got == expected, raw
        if expected is None:
            refused += 1
    assert accepted_fast > 100 and refused > 1000  # both sides exercised


@pytest.mark.parametrize("raw", [
    b'{"market": "SOL/USDC", "firstSeq": 1.0, "lastSeq": 1, "tsMs": 5, "events": []}',
    b'{"market": "SOL/USDC", "first_seq": 1, "lastSeq": 1, "tsMs": 5, "events": []}',
    b'{"market": "SOL/USDC", "firstSeq": "1", "lastSeq": 1, "tsMs": 5, "events": []}',
])
def test_what_pydantic_coerces_goes_through_pydantic(raw: bytes) -> None:
    assert fast_validate(raw) is None
    item = decode_entry("SOL/USDC", (1, 0), {b"b": raw})
    assert isinstance(item, Decoded)
    assert item.batch == pydantic_dump(raw)


def test_refused_by_pydantic_is_malformed_with_its_reason() -> None:
    batch = BatchGen(SOL).batch(1)
    bad = copy.deepcopy(batch)
    bad["events"][0]["trade"]["takerSide"] = "up"
    item = decode_entry("SOL/USDC", (1, 0), {b"b": dumps(bad)})
    assert isinstance(item, Malformed) and "takerSide" in item.reason

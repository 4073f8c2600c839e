"""Stream entries of `events:{M}` -> validated EventBatch, or a dead-letter reason. No I/O.

An entry is accepted only when: it has the field `b`; `b` is an EventBatch (the shared
schema, extra fields refused); the batch's market, and every trade's and order's market, is
the stream's market; `firstSeq <= lastSeq`. Anything else is malformed and goes to the
dead-letter stream with the reason; it never stops the processor.

Stream ids are compared as `(ms, seq)` integer pairs, never as strings.

A batch is returned as a plain dict, exactly what pydantic's model would dump in JSON mode
with aliases (`priceTicks`, enum values as strings, defaults filled in): the writer needs
rows, not model objects, and building ~3 model objects per event was most of the decode
time. Well-formed engine output takes the fast path below; pydantic stays the authority for
everything else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import BaseModel, ValidationError

from cryptex_common.messages import EVENT_BATCH_ADAPTER, EventBatch
from cryptex_common.stream_ids import StreamId

Batch = dict[str, Any]  # an EventBatch dumped: mode="json", by_alias=True
MAX_REASON_CHARS = 500


@dataclass(frozen=True, slots=True)
class Decoded:
    stream_id: StreamId
    batch: Batch
    raw: bytes


@dataclass(frozen=True, slots=True)
class Malformed:
    stream_id: StreamId
    reason: str
    raw: bytes


def decode_entry(
    market: str, stream_id: StreamId, fields: dict[bytes, bytes] | None
) -> Decoded | Malformed:
    """`fields` as redis-py returns them without decode_responses (bytes keys and values);
    None for a pending entry that was trimmed from the stream."""
    if fields is None:
        return Malformed(stream_id, "entry no longer in the stream (trimmed)", b"")
    raw = fields.get(b"b")
    if raw is None:
        keys = sorted(k.decode(errors="replace") for k in fields)
        return Malformed(stream_id, f"missing field 'b' (fields: {keys})", b"")
    try:
        batch = validate(raw)
    except ValidationError as exc:
        return Malformed(stream_id, f"invalid EventBatch: {exc}"[:MAX_REASON_CHARS], raw)
    except ValueError as exc:  # pragma: no cover - validate_json reports JSON errors above
        return Malformed(stream_id, f"invalid JSON: {exc}"[:MAX_REASON_CHARS], raw)
    batch_market = batch["market"]
    if batch_market != market:
        return Malformed(stream_id, f"batch market {batch_market!r} on stream of {market!r}", raw)
    if batch["firstSeq"] > batch["lastSeq"]:
        return Malformed(
            stream_id, f"firstSeq {batch['firstSeq']} > lastSeq {batch['lastSeq']}", raw)
    for event in batch["events"]:
        kind = event["type"]
        inner = event[kind]["market"]  # "trade" -> event["trade"], "order" -> event["order"]
        if inner != market:
            return Malformed(stream_id, f"{kind} of market {inner!r} in batch of {market!r}", raw)
    return Decoded(stream_id, batch, raw)


# --- fast path -----------------------------------------------------------------------------
# orjson plus a strict shape check derived from the pydantic models themselves. It accepts
# only a strict subset of what pydantic accepts: exact JSON types (int is not bool, no
# floats or numeric strings), alias names only, no extra keys, enum/literal values spelled
# exactly. Defaults of absent optional fields are filled in, so an accepted entry gives
# exactly `validate_json(raw).model_dump(mode="json", by_alias=True)` (tested, also on
# fuzzed input). Anything else goes to pydantic, which accepts (and coerces) or gives the
# dead-letter reason. A model feature the shape check does not understand (a constraint, a
# validator, a config option, an unknown type) disables the fast path (`FAST_PATH` False).

_MAX_SHAPES = 256  # cached verdicts per model (bounded: shapes come from the input)


class _Unsupported(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Rule:
    types: frozenset[type]
    choices: frozenset[object] | None = None  # allowed values (enum, literal; None if optional)
    nested: _Checker | None = None  # a model, or the element of a tagged list
    tagged: dict[str, _Checker] | None = None  # list of a union discriminated by "type"


@dataclass(frozen=True, slots=True)
class _Verdict:
    choices: tuple[tuple[str, frozenset[object]], ...]
    nested: tuple[tuple[str, _Checker], ...]
    tagged: tuple[tuple[str, dict[str, _Checker]], ...]
    defaults: tuple[tuple[str, object], ...]


_UNJUDGED = _Verdict((), (), (), ())  # a sentinel: shape not seen yet


def _tagged_union(ann: Any) -> dict[str, _Checker]:
    if get_origin(ann) is not Annotated:
        raise _Unsupported(repr(ann))
    union, *meta = get_args(ann)
    if [getattr(m, "discriminator", None) for m in meta] != ["type"]:
        raise _Unsupported(repr(ann))
    out: dict[str, _Checker] = {}
    for model in get_args(union):
        tag = model.model_fields["type"].annotation
        (value,) = get_args(tag)
        out[value] = _Checker(model)
    return out


def _rule(ann: Any) -> _Rule:
    origin = get_origin(ann)
    if ann is int or ann is str or ann is bool:
        return _Rule(frozenset({ann}))
    if isinstance(ann, type) and issubclass(ann, Enum):
        values = frozenset(m.value for m in ann)
        if not all(type(v) is str for v in values):
            raise _Unsupported(repr(ann))
        return _Rule(frozenset({str}), values)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _Rule(frozenset({dict}), nested=_Checker(ann))
    if origin is Literal:
        if not all(type(v) is str for v in get_args(ann)):
            raise _Unsupported(repr(ann))
        return _Rule(frozenset({str}), frozenset(get_args(ann)))
    if origin is list:
        (item,) = get_args(ann)
        return _Rule(frozenset({list}), tagged=_tagged_union(item))
    if origin in (Union, UnionType):
        args = get_args(ann)
        others = [a for a in args if a is not type(None)]
        if len(others) != 1 or len(args) != 2:
            raise _Unsupported(repr(ann))
        inner = _rule(others[0])
        if inner.nested is not None or inner.tagged is not None:
            raise _Unsupported(repr(ann))
        choices = None if inner.choices is None else inner.choices | {None}
        return _Rule(inner.types | {type(None)}, choices)
    raise _Unsupported(repr(ann))


class _Checker:
    """Checks (and completes with defaults) one model's dict, as parsed by orjson."""

    def __init__(self, model: type[BaseModel]) -> None:
        config = dict(model.model_config)
        if config.pop("extra", None) != "forbid" or set(config) - {"populate_by_name"}:
            raise _Unsupported(f"{model.__name__} config {model.model_config}")
        decorators = model.__pydantic_decorators__
        if any((decorators.validators, decorators.field_validators,
                decorators.root_validators, decorators.model_validators)):
            raise _Unsupported(f"{model.__name__} has validators")
        self.rules: dict[str, _Rule] = {}
        self.required: frozenset[str]
        self.defaults: dict[str, object] = {}
        required = set()
        for name, info in model.model_fields.items():
            if info.metadata or info.default_factory is not None:
                raise _Unsupported(f"{model.__name__}.{name}")
            key = info.alias or name
            self.rules[key] = _rule(info.annotation)
            if info.is_required():
                required.add(key)
            else:
                default = info.default
                self.defaults[key] = default.value if isinstance(default, Enum) else default
        self.required = frozenset(required)
        self.shapes: dict[tuple[tuple[str, ...], tuple[type, ...]], _Verdict | None] = {}

    def _judge(self, keys: tuple[str, ...], types: tuple[type, ...]) -> _Verdict | None:
        if not self.required.issubset(keys):
            return None
        choices, nested, tagged = [], [], []
        for key, kind in zip(keys, types, strict=True):
            rule = self.rules.get(key)
            if rule is None or kind not in rule.types:
                return None
            if rule.choices is not None:
                choices.append((key, rule.choices))
            if rule.nested is not None:
                nested.append((key, rule.nested))
            if rule.tagged is not None:
                tagged.append((key, rule.tagged))
        defaults = tuple((k, v) for k, v in self.defaults.items() if k not in keys)
        return _Verdict(tuple(choices), tuple(nested), tuple(tagged), defaults)

    def check(self, d: dict[str, Any]) -> bool:
        shape = (tuple(d), tuple(map(type, d.values())))
        verdict = self.shapes.get(shape, _UNJUDGED)
        if verdict is _UNJUDGED:
            verdict = self._judge(*shape)
            if len(self.shapes) < _MAX_SHAPES:
                self.shapes[shape] = verdict
        if verdict is None:
            return False
        for key, allowed in verdict.choices:
            if d[key] not in allowed:
                return False
        for key, checker in verdict.nested:
            if not checker.check(d[key]):
                return False
        for key, by_tag in verdict.tagged:
            if not _tagged_items_pass(d[key], by_tag):
                return False
        for key, default in verdict.defaults:
            d[key] = default
        return True


def _tagged_items_pass(items: list[Any], by_tag: dict[str, _Checker]) -> bool:
    """Every item is a dict whose "type" names a variant whose checker passes it."""
    for item in items:
        if type(item) is not dict:
            return False
        tag = item.get("type")
        item_checker = by_tag.get(tag) if type(tag) is str else None
        if item_checker is None or not item_checker.check(item):
            return False
    return True


try:
    _BATCH_CHECKER: _Checker | None = _Checker(EventBatch)
except _Unsupported as exc:  # pragma: no cover - a schema change the fast path lacks
    _BATCH_CHECKER = None
    logging.getLogger(__name__).warning(
        "EventBatch fast path disabled", extra={"reason": str(exc)})
FAST_PATH = _BATCH_CHECKER is not None


def fast_validate(raw: bytes) -> Batch | None:
    """The batch as pydantic would dump it, or None: not in the fast path's strict subset
    (pydantic decides)."""
    if _BATCH_CHECKER is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not _BATCH_CHECKER.check(data):
        return None
    return data


def validate(raw: bytes) -> Batch:
    """The batch as a plain dict (alias keys, enum values), exactly
    `EVENT_BATCH_ADAPTER.validate_json(raw).model_dump(mode="json", by_alias=True)`.
    Raises pydantic's ValidationError."""
    batch = fast_validate(raw)
    if batch is None:
        batch = EVENT_BATCH_ADAPTER.validate_json(raw).model_dump(mode="json", by_alias=True)
    return batch

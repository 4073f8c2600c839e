"""The Market CRD: generated from MarketSpec, committed copies in sync, schema-valid as a
CRD, structural; the example Markets valid; bad Markets rejected.

Market objects are checked with jsonschema against the CRD's own openAPIV3Schema, with
`additionalProperties: false` added where the API server would drop or (kubectl's strict
field validation) reject unknown fields. The CEL rules (x-kubernetes-validations) run on a
real CEL interpreter (cel-python), with `oldSelf` for the immutability rules.
Not proved: the API server's own CEL cost limits, defaulting and pruning.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from cryptex_common.markets import MarketSpec, load_markets_yaml
from cryptex_common.registry import IMMUTABLE_FIELDS
from cryptex_operator import crd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "k8s" / "examples").glob("*.yaml"))


def openapi() -> dict[str, Any]:
    return crd.market_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def as_jsonschema(node: Any) -> Any:
    """Drop x-kubernetes-*; forbid unknown fields where the schema lists properties."""
    if isinstance(node, list):
        return [as_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node and node.get("properties") and node is not openapi_root():
        out.setdefault("additionalProperties", False)
    return out


_ROOT_CACHE: dict[str, Any] = {}


def openapi_root() -> dict[str, Any]:
    return _ROOT_CACHE.setdefault("root", openapi())


def schema_errors(obj: dict[str, Any]) -> list[str]:
    schema = as_jsonschema(openapi_root())
    schema["properties"]["metadata"] = {"type": "object"}
    validator = jsonschema.Draft4Validator(schema)
    return [e.message for e in validator.iter_errors(obj)]


def cel_rules(node: dict[str, Any], path: tuple[str, ...] = ()):
    """(path, rule, message) for every x-kubernetes-validations rule in the schema."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule["rule"], rule["message"]
    for name, child in node.get("properties", {}).items():
        yield from cel_rules(child, (*path, name))


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def cel_errors(new: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Evaluate every CEL rule as the API server would: transition rules (oldSelf) only on
    update, and only where the field exists on both sides."""
    env = celpy.Environment()
    errors = []
    for path, rule, message in cel_rules(openapi_root()):
        value, before = _at(new, path), _at(old, path)
        if value is None or ("oldSelf" in rule and before is None):
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in rule:
            activation["oldSelf"] = celpy.json_to_cel(before)
        if not env.program(env.compile(rule)).evaluate(activation):
            errors.append(message)
    return errors


def example(name: str = "sol-usdc.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / "k8s" / "examples" / name).read_text())


def test_committed_crds_are_generated() -> None:
    for path in crd.OUTPUTS:
        assert path.read_text() == crd.crd_yaml(), f"run python -m cryptex_operator.crd ({path})"


def test_crd_is_a_valid_structural_crd() -> None:
    doc = yaml.safe_load(crd.OUTPUTS[0].read_text())
    kubernetes_validate.validate(doc, "1.31", strict=True)

    def walk(node: dict[str, Any], where: str) -> None:
        assert "type" in node, f"{where}: every schema node needs a type (structural)"
        assert not ("properties" in node and "additionalProperties" in node), where
        for name, child in node.get("properties", {}).items():
            walk(child, f"{where}.{name}")
        if "items" in node:
            walk(node["items"], f"{where}[]")

    walk(openapi_root(), "")
    names = doc["spec"]["names"]
    assert doc["spec"]["scope"] == "Namespaced" and names["shortNames"] == ["mkt"]
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert {"Symbol", "State", "Phase", "Ready", "Age"} <= set(columns)


def test_spec_schema_is_the_market_spec_model() -> None:
    """Every MarketSpec field, same JSON name, type, pattern, bounds, enum and default."""
    spec = openapi_root()["properties"]["spec"]
    model = MarketSpec.model_json_schema(by_alias=True)
    assert set(spec["properties"]) - {"engine"} == set(model["properties"])
    assert spec["required"] == model["required"]
    for name, prop in model["properties"].items():
        if "$ref" in prop:  # an enum: its values in $defs, its default beside the $ref
            prop = {**model["$defs"][prop["$ref"].rsplit("/", 1)[-1]], **prop}
        ours = spec["properties"][name]
        for key in ("type", "pattern", "minimum", "maximum", "enum", "default"):
            assert ours.get(key) == prop.get(key), (name, key)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_markets(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert obj["apiVersion"] == "cryptex.io/v1alpha1" and obj["kind"] == "Market"
    assert schema_errors(obj) == []
    assert cel_errors(obj) == []
    spec = {k: v for k, v in obj["spec"].items() if k != "engine"}
    MarketSpec.model_validate(spec)  # the grid rules the schema cannot express


def test_examples_agree_with_markets_yaml() -> None:
    local = {m.symbol: m for m in load_markets_yaml((ROOT / "markets.yaml").read_text())}
    for path in EXAMPLES:
        spec = {k: v for k, v in yaml.safe_load(path.read_text())["spec"].items()
                if k != "engine"}
        assert MarketSpec.model_validate(spec) == local[spec["symbol"]]


@pytest.mark.parametrize("change,expected", [
    ({"symbol": "sol/usdc"}, "does not match"),
    ({"symbol": "SOLUSDC"}, "does not match"),
    ({"makerFeeBps": -1}, "less than the minimum"),
    ({"takerFeeBps": 5000}, "greater than the maximum"),
    ({"tickSize": "0.010.1"}, "does not match"),
    ({"tickSize": 0.01}, "is not of type 'string'"),
    ({"state": "paused"}, "is not one of"),
    ({"selfTradePrevention": "cancel_newest"}, "is not one of"),
    ({"tickSizes": "0.01"}, "Additional properties"),
    ({"engine": {"resources": {"limits": {"gpu": "1"}}}}, "Additional properties"),
])
def test_bad_markets_are_rejected_by_the_schema(change: dict[str, Any], expected: str) -> None:
    obj = example()
    obj["spec"].update(change)
    errors = schema_errors(obj)
    assert any(expected in e for e in errors), errors


def test_missing_required_field_is_rejected() -> None:
    obj = example()
    del obj["spec"]["quoteAsset"]
    assert any("'quoteAsset' is a required property" in e for e in schema_errors(obj))


def test_symbol_must_match_assets_cel() -> None:
    obj = example()
    obj["spec"]["symbol"] = "SOL/USDT"
    assert schema_errors(obj) == []  # each field alone is fine...
    assert cel_errors(obj) == ["symbol must be baseAsset/quoteAsset"]  # ...together not


@pytest.mark.parametrize("field,value", [
    ("symbol", "SOL/USDT"), ("baseAsset", "SOLX"), ("quoteAsset", "USDT"),
    ("baseDecimals", 8), ("quoteDecimals", 2), ("tickSize", "0.1"), ("lotSize", "0.01"),
])
def test_immutable_fields_cannot_change(field: str, value: Any) -> None:
    old = example()
    new = copy.deepcopy(old)
    new["spec"][field] = value
    assert f"{field} is immutable" in cel_errors(new, old)


def test_mutable_fields_can_change() -> None:
    old = example()
    new = copy.deepcopy(old)
    new["spec"].update({"state": "halted", "makerFeeBps": 0, "takerFeeBps": 30,
                        "minQuantity": "0.01", "engine": {"resources": {"limits": {"cpu": "2"}}}})
    assert schema_errors(new) == [] and cel_errors(new, old) == []


def test_immutable_rules_cover_the_registry() -> None:
    """The CRD and the registry agree on what may never change."""
    aliases = {name: f.alias or name for name, f in MarketSpec.model_fields.items()}
    ruled = {path[-1] for path, rule, _ in cel_rules(openapi_root()) if rule == "self == oldSelf"}
    assert ruled == {aliases[f] for f in IMMUTABLE_FIELDS}

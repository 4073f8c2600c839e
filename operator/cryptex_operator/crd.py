"""The Market CustomResourceDefinition, generated from the shared market spec model.

`spec` is `MarketSpec` (libs/common/cryptex_common/markets.py) field for field, plus one
operator-only block, `engine` (the engine pod's resources). The committed YAML copies
(k8s/crd/ and the operator chart's crds/) are written by `python -m cryptex_operator.crd`
and a test checks they equal `market_crd()`.

Unknown fields: a structural schema may not combine `properties` with
`additionalProperties`; the API server prunes unknown fields and, with kubectl's default
strict field validation, rejects them.

Validation the API server does for us: types, patterns, enums, bounds (from the model);
CEL rules for `symbol == baseAsset/quoteAsset` and immutability (`self == oldSelf`) of the
fields the registry refuses to change. The model's grid rules (lot and tick against the
asset decimals) are checked by the operator, which marks such a Market Failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from cryptex_common.markets import MarketSpec
from cryptex_common.registry import IMMUTABLE_FIELDS

GROUP = "cryptex.io"
VERSION = "v1alpha1"
PLURAL = "markets"
KIND = "Market"
FINALIZER = "cryptex.io/market-drain"
CRD_NAME = f"{PLURAL}.{GROUP}"

_KEEP = ("type", "description", "pattern", "minimum", "maximum", "enum", "default")
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"


def _structural(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic property schema -> an OpenAPI v3 structural one (refs inlined)."""
    if "$ref" in prop:
        prop = {**defs[prop["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in prop.items()
                                                          if k != "$ref"}}
    return {k: prop[k] for k in _KEEP if k in prop}


def spec_schema_from_model() -> dict[str, Any]:
    """The part of `spec` that is the market spec: properties, required, in model order."""
    model = MarketSpec.model_json_schema(by_alias=True)
    defs = model.get("$defs", {})
    props = {name: _structural(p, defs) for name, p in model["properties"].items()}
    alias = {name: f.alias or name for name, f in MarketSpec.model_fields.items()}
    for field in IMMUTABLE_FIELDS:
        props[alias[field]]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"{alias[field]} is immutable"}
        ]
    return {"properties": props, "required": list(model["required"])}


def _resource_list() -> dict[str, Any]:
    quantity = {"type": "string", "pattern": QUANTITY_PATTERN}
    return {
        "type": "object",
        "properties": {"cpu": quantity, "memory": quantity},
    }


ENGINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The engine pod (operator only; not part of the market spec).",
    "properties": {
        "resources": {
            "type": "object",
            "properties": {"requests": _resource_list(), "limits": _resource_list()},
        },
    },
}

CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer"},
    },
}

PHASES = ["Pending", "Trading", "Halted", "Draining", "Closed", "Failed"]

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "phase": {"type": "string", "enum": PHASES},
        "observedGeneration": {"type": "integer"},
        "message": {"type": "string"},
        "engine": {"type": "string", "description": "The engine Deployment's name."},
        "lastSequence": {"type": "integer", "description": "The engine's last settled seq."},
        "conditions": {
            "type": "array",
            "items": CONDITION_SCHEMA,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    },
}

PRINTER_COLUMNS = [
    {"name": "Symbol", "type": "string", "jsonPath": ".spec.symbol"},
    {"name": "State", "type": "string", "jsonPath": ".spec.state"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Seq", "type": "integer", "jsonPath": ".status.lastSequence", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def market_crd() -> dict[str, Any]:
    market = spec_schema_from_model()
    spec = {
        "type": "object",
        "required": market["required"],
        "properties": {**market["properties"], "engine": ENGINE_SCHEMA},
        "x-kubernetes-validations": [
            {"rule": "self.symbol == self.baseAsset + '/' + self.quoteAsset",
             "message": "symbol must be baseAsset/quoteAsset"},
            {"rule": "self.baseAsset != self.quoteAsset",
             "message": "baseAsset and quoteAsset must differ"},
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND, "plural": PLURAL, "singular": "market", "listKind": "MarketList",
                "shortNames": ["mkt"], "categories": ["cryptex"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A trading pair on Cryptex; the operator runs its engine.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": STATUS_SCHEMA,
                    },
                }},
            }],
        },
    }


HEADER = "# Generated by `python -m cryptex_operator.crd` from MarketSpec. Do not edit.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(market_crd(), sort_keys=False, width=100)


ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (
    ROOT / "k8s" / "crd" / "markets.cryptex.io.yaml",
    ROOT / "charts" / "cryptex" / "charts" / "operator" / "crds" / "markets.cryptex.io.yaml",
)


def main() -> int:
    text = crd_yaml()
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

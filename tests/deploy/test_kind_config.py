"""kind-config.yaml against a JSON Schema transcribed from kind's v1alpha4 types (Cluster,
Node, Networking, PortMapping, Mount). kind decodes strictly, so unknown fields are errors
here too. Proves field names, enums and types; not that kind boots (no Docker here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

PORT_MAPPING = {
    "type": "object", "additionalProperties": False, "required": ["containerPort"],
    "properties": {
        "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "hostPort": {"type": "integer", "minimum": 0, "maximum": 65535},
        "listenAddress": {"type": "string"},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
    },
}
MOUNT = {
    "type": "object", "additionalProperties": False, "required": ["hostPath", "containerPath"],
    "properties": {
        "hostPath": {"type": "string"}, "containerPath": {"type": "string"},
        "readOnly": {"type": "boolean"}, "selinuxRelabel": {"type": "boolean"},
        "propagation": {"enum": ["None", "HostToContainer", "Bidirectional"]},
    },
}
NODE = {
    "type": "object", "additionalProperties": False, "required": ["role"],
    "properties": {
        "role": {"enum": ["control-plane", "worker"]},
        "image": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "extraMounts": {"type": "array", "items": MOUNT},
        "extraPortMappings": {"type": "array", "items": PORT_MAPPING},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array", "items": {"type": "object"}},
    },
}
CLUSTER: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["kind", "apiVersion"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "nodes": {"type": "array", "items": NODE, "minItems": 1},
        "networking": {"type": "object", "additionalProperties": False, "properties": {
            "ipFamily": {"enum": ["ipv4", "ipv6", "dual"]},
            "apiServerPort": {"type": "integer"}, "apiServerAddress": {"type": "string"},
            "podSubnet": {"type": "string"}, "serviceSubnet": {"type": "string"},
            "disableDefaultCNI": {"type": "boolean"},
            "kubeProxyMode": {"enum": ["iptables", "ipvs", "nftables", "none"]},
            "dnsSearch": {"type": "array", "items": {"type": "string"}},
        }},
        "featureGates": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "runtimeConfig": {"type": "object", "additionalProperties": {"type": "string"}},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array", "items": {"type": "object"}},
        "containerdConfigPatches": {"type": "array", "items": {"type": "string"}},
    },
}


def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "kind-config.yaml").read_text())


def test_kind_config_matches_kinds_schema() -> None:
    jsonschema.validate(config(), CLUSTER)
    for node in config()["nodes"]:
        for patch in node.get("kubeadmConfigPatches", []):
            assert isinstance(yaml.safe_load(patch), dict)


def test_ingress_ports_reach_the_host() -> None:
    (node,) = config()["nodes"]
    ports = {m["containerPort"]: m["hostPort"] for m in node["extraPortMappings"]}
    assert set(ports) == {80, 443}
    assert "ingress-ready=true" in node["kubeadmConfigPatches"][0]
    assert config()["name"] == "cryptex"


@pytest.mark.parametrize("bad", [
    {"nodes": [{"role": "master"}]},
    {"nodes": [{"role": "control-plane", "extraPortMapping": []}]},
    {"nodes": [{"role": "control-plane", "extraPortMappings": [{"containerPort": 80,
                                                                "protocol": "tcp"}]}]},
])
def test_schema_catches_mistakes(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config(), **bad}, CLUSTER)

"""The pure builders: the engine Deployment for each example Market, and status fields."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cryptex_common.markets import MarketState
from cryptex_operator import render
from cryptex_operator.config import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "k8s" / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_engine_deployment_for_each_example(path: Path) -> None:
    market = yaml.safe_load(path.read_text())
    cfg = OperatorSettings(engine_image="cryptex/engine:test", engine_env_secret="conn")
    dep = render.engine_deployment(name=market["metadata"]["name"], namespace="cryptex",
                                   uid="u-1", spec=market["spec"], cfg=cfg)
    symbol = market["spec"]["symbol"]
    assert dep["metadata"]["name"] == "engine-" + symbol.lower().replace("/", "-")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["--market", symbol]
    assert container["envFrom"] == [{"secretRef": {"name": "conn"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CRYPTEX_OPS_HOST"] == "0.0.0.0" and env["CRYPTEX_OPS_PORT"] == "9100"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The selector is a subset of the pod labels, and names the market (no "/" in labels).
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["cryptex.io/market"] == symbol.replace("/", "_")
    kubernetes_validate.validate(dep, "1.31", strict=True)


def test_resources_merge_over_defaults() -> None:
    spec = {"engine": {"resources": {"requests": {"cpu": "1"}}}}
    assert render.engine_resources(spec) == {
        "requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    assert render.engine_resources({}) == render.DEFAULT_RESOURCES


def test_condition_keeps_transition_time_until_status_flips() -> None:
    first = render.market_status(state=MarketState.OPEN, engine="e", engine_available=False,
                                 last_seq=None, generation=1, now="T1", previous=None)
    same = render.market_status(state=MarketState.OPEN, engine="e", engine_available=False,
                                last_seq=None, generation=1, now="T2", previous=first)
    assert render.changed(first, same) == {}
    flipped = render.market_status(state=MarketState.OPEN, engine="e", engine_available=True,
                                   last_seq=5, generation=1, now="T3", previous=same)
    diff = render.changed(same, flipped)
    assert set(diff) == {"conditions", "message", "lastSequence"}
    assert {c["lastTransitionTime"] for c in diff["conditions"]} == {"T3"}


@pytest.mark.parametrize(("state", "phase"), [
    ("open", "Trading"), ("postOnly", "Trading"), ("cancelOnly", "Halted"),
    ("halted", "Halted"), ("closed", "Closed")])
def test_phase_follows_state(state: str, phase: str) -> None:
    status = render.market_status(state=MarketState(state), engine="e", engine_available=True,
                                  last_seq=1, generation=2, now="T", previous=None)
    assert status["phase"] == phase


@pytest.mark.parametrize("standalone", [True, False])
def test_standalone_operator_does_not_require_peering(standalone: bool) -> None:
    """A peering name makes kopf's peering mandatory even when standalone (it then waits for
    a KopfPeering that a standalone install does not have): only a peered operator names one."""
    from cryptex_operator.__main__ import run_options

    options = run_options(OperatorSettings(standalone=standalone, peering_name="cryptex-operator"))
    assert options["standalone"] is standalone
    assert options["peering_name"] == (None if standalone else "cryptex-operator")

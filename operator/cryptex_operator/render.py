"""Pure builders: Market -> engine Deployment body, status fields. No I/O, no clock.

The handlers call these and hand the result to the Kubernetes client (k8s.py).
"""

from __future__ import annotations

from typing import Any

from cryptex_common import keys
from cryptex_common.markets import MarketSpec, MarketState, market_tag
from cryptex_operator.config import OperatorSettings
from cryptex_operator.crd import GROUP, KIND, VERSION

ENGINE_FIELDS = ("engine",)  # spec keys that are not part of the market spec
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}
UID = 10001


def market_spec(spec: dict[str, Any]) -> MarketSpec:
    """The Market's spec without the operator-only blocks; raises pydantic.ValidationError."""
    return MarketSpec.model_validate({k: v for k, v in spec.items() if k not in ENGINE_FIELDS})


def deployment_name(symbol: str) -> str:
    """`SOL/USDC` -> `engine-sol-usdc` (DNS-1123: the symbol pattern allows only A-Z0-9)."""
    return "engine-" + symbol.lower().replace("/", "-")


def selector_labels(symbol: str, release: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "engine",
        "app.kubernetes.io/instance": release,
        "cryptex.io/market": market_tag(symbol),
    }


def engine_labels(symbol: str, release: str) -> dict[str, str]:
    return {
        **selector_labels(symbol, release),
        "app.kubernetes.io/component": "engine",
        "app.kubernetes.io/part-of": "cryptex",
        "app.kubernetes.io/managed-by": "cryptex-operator",
    }


def engine_resources(spec: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Defaults, with `spec.engine.resources.requests/limits` merged key by key."""
    wanted = (spec.get("engine") or {}).get("resources") or {}
    return {
        part: {**DEFAULT_RESOURCES.get(part, {}), **(wanted.get(part) or {})}
        for part in ("requests", "limits")
    }


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "ops"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def engine_container(market: MarketSpec, spec: dict[str, Any], cfg: OperatorSettings) -> dict[str, Any]:
    """The engine container: hardened, probed, configured from `cfg` (Redis from a Secret
    when `engine_env_secret` names one)."""
    env: list[dict[str, Any]] = [
        {"name": "CRYPTEX_OPS_HOST", "value": "0.0.0.0"},
        {"name": "CRYPTEX_OPS_PORT", "value": str(cfg.engine_ops_port)},
        {"name": "CRYPTEX_LOG_LEVEL", "value": cfg.engine_log_level},
        {"name": "CRYPTEX_INSTANCE_ID",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    container: dict[str, Any] = {
        "name": "engine",
        "image": cfg.engine_image,
        "imagePullPolicy": cfg.engine_image_pull_policy,
        "args": ["--market", market.symbol],
        "env": env,
        "ports": [{"name": "ops", "containerPort": cfg.engine_ops_port, "protocol": "TCP"}],
        # Recovery (snapshot + replay) can take a while: the startup probe covers it.
        "startupProbe": _probe("/healthz", 2, 60),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 3),
        "resources": engine_resources(spec),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if cfg.engine_env_secret:
        container["envFrom"] = [{"secretRef": {"name": cfg.engine_env_secret}}]
    else:
        env.append({"name": "CRYPTEX_REDIS_URL", "value": cfg.redis_url})
    return container


def engine_deployment(
    *, name: str, namespace: str, uid: str, spec: dict[str, Any], cfg: OperatorSettings
) -> dict[str, Any]:
    """The engine Deployment for one Market: one replica, Recreate, owned by the Market."""
    market = market_spec(spec)
    labels = engine_labels(market.symbol, cfg.release)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(market.symbol),
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                "cryptex.io/symbol": market.symbol,
                "cryptex.io/command-stream": keys.commands_stream(market.symbol),
            },
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            # One writer per market: never two engine pods, not even during a rollout.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(market.symbol, cfg.release)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # Above the engine's own shutdown grace, so it can snapshot on SIGTERM.
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [engine_container(market, spec, cfg)],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


# --- status ---------------------------------------------------------------------------
PHASE_BY_STATE = {
    MarketState.OPEN: "Trading",
    MarketState.POST_ONLY: "Trading",
    MarketState.CANCEL_ONLY: "Halted",
    MarketState.HALTED: "Halted",
    MarketState.CLOSED: "Closed",
}


def condition(
    type_: str, ok: bool, reason: str, message: str, generation: int | None, now: str,
    previous: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime moves only when the status flips."""
    status = "True" if ok else "False"
    before = next((c for c in previous or [] if c.get("type") == type_), None)
    since = before["lastTransitionTime"] if before and before.get("status") == status else now
    cond = {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def market_status(
    *, state: MarketState, engine: str, engine_available: bool, last_seq: int | None,
    generation: int | None, now: str, previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The full status of a reconciled Market."""
    prev = (previous or {}).get("conditions")
    status: dict[str, Any] = {
        "phase": PHASE_BY_STATE[state],
        "observedGeneration": generation,
        "engine": engine,
        "message": "" if engine_available else "waiting for the engine to become available",
        "conditions": [
            condition("Ready", engine_available, "EngineReady" if engine_available
                      else "EngineStarting", "", generation, now, prev),
            condition("EngineAvailable", engine_available,
                      "MinimumReplicasAvailable" if engine_available
                      else "MinimumReplicasUnavailable", "", generation, now, prev),
        ],
    }
    if last_seq is not None:
        status["lastSequence"] = last_seq
    return {k: v for k, v in status.items() if v is not None}


def failed_status(
    *, reason: str, message: str, generation: int | None, now: str,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    prev = (previous or {}).get("conditions")
    status: dict[str, Any] = {
        "phase": "Failed",
        "message": message,
        "conditions": [condition("Ready", False, reason, message, generation, now, prev)],
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def changed(current: dict[str, Any] | None, wanted: dict[str, Any]) -> dict[str, Any]:
    """The keys of `wanted` that differ from `current`: the status patch, often empty."""
    current = current or {}
    return {k: v for k, v in wanted.items() if current.get(k) != v}

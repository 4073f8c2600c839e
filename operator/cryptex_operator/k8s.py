"""The few Kubernetes API calls the operator makes (sync client; run via asyncio.to_thread).

Every call is idempotent: create tolerates "already exists" by patching, delete tolerates
"not found". A Deployment owned by another Market is never taken over.
"""

from __future__ import annotations

from typing import Any

import kubernetes
from kubernetes.client import ApiClient, AppsV1Api
from kubernetes.client.exceptions import ApiException

from cryptex_operator.config import OperatorSettings


class OwnedByAnother(Exception):
    """The engine Deployment exists and belongs to another Market (same symbol twice)."""


def apps_api(cfg: OperatorSettings) -> AppsV1Api:
    if cfg.k8s_server:
        conf = kubernetes.client.Configuration(host=cfg.k8s_server)
        return AppsV1Api(ApiClient(conf))
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return AppsV1Api()


def ensure_deployment(api: AppsV1Api, body: dict[str, Any]) -> str:
    """Create the Deployment, or bring an existing one to `body`. Returns what it did."""
    meta = body["metadata"]
    try:
        api.create_namespaced_deployment(meta["namespace"], body)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = api.read_namespaced_deployment(meta["name"], meta["namespace"])
    owners = {ref.uid for ref in existing.metadata.owner_references or []}
    ours = {ref["uid"] for ref in meta["ownerReferences"]}
    if not owners & ours:
        raise OwnedByAnother(f"deployment {meta['name']} is owned by {sorted(owners)}")
    api.patch_namespaced_deployment(meta["name"], meta["namespace"], body)
    return "patched"


def delete_deployment(api: AppsV1Api, namespace: str, name: str) -> bool:
    try:
        api.delete_namespaced_deployment(name, namespace)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def deployment_available(api: AppsV1Api, namespace: str, name: str) -> bool:
    try:
        dep = api.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return bool(dep.status and (dep.status.available_replicas or 0) >= 1)

"""`python -m cryptex_operator`: run the Market operator (kopf).

Two replicas may run: kopf peering (the KopfPeering named by CRYPTEX_PEERING_NAME) keeps
one active. Liveness is served on http://0.0.0.0:CRYPTEX_LIVENESS_PORT/healthz.
"""

from __future__ import annotations

from typing import Any

import kopf

from cryptex_common.logs import configure_logging
from cryptex_common.settings import load_settings
from cryptex_operator import handlers  # noqa: F401  (registers the handlers)
from cryptex_operator.config import OperatorSettings


def run_options(cfg: OperatorSettings) -> dict[str, Any]:
    """kopf.run's arguments. A peering name makes kopf's peering mandatory (it waits for the
    KopfPeering resource even when standalone), so a standalone operator passes none."""
    return {
        "clusterwide": not cfg.watch_namespace,
        "namespaces": [cfg.watch_namespace] if cfg.watch_namespace else (),
        "standalone": cfg.standalone,
        "peering_name": None if cfg.standalone else cfg.peering_name,
        "liveness_endpoint": f"http://0.0.0.0:{cfg.liveness_port}/healthz",
    }


def main() -> None:
    cfg = load_settings(OperatorSettings)
    configure_logging("operator", cfg.log_level)
    kopf.run(**run_options(cfg))


if __name__ == "__main__":
    main()

"""Copy what the chart needs from elsewhere into the chart (Helm's .Files cannot reach
outside it), so that the copies are plain files the chart packages. (The shared template
helpers are not copied: they live once in the library chart charts/cryptex/charts/cryptex-lib.)

- monitoring/grafana/dashboards/*.json -> charts/cryptex/files/dashboards/;
- monitoring/prometheus/**/*.y*ml holding rule `groups` -> charts/cryptex/files/prometheus/;
- monitoring/promtail/promtail.yaml -> charts/cryptex/files/promtail/.

    python charts/sync.py          # write the copies
    python charts/sync.py --check  # exit 1 and list what is out of date (the tests do this)

The copies are byte-for-byte (dashboards must stay valid JSON, so no header is added);
tests/deploy/test_chart_sync.py fails when a copy differs from its source.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cryptex"
MONITORING = ROOT / "monitoring"


def _is_rules_file(path: Path) -> bool:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("groups"), list)


def wanted() -> dict[Path, bytes]:
    """Every copy the chart should hold: destination -> content."""
    copies: dict[Path, bytes] = {}
    for src in sorted((MONITORING / "grafana" / "dashboards").glob("*.json")):
        copies[CHART / "files" / "dashboards" / src.name] = src.read_bytes()
    prom = MONITORING / "prometheus"
    for src in sorted([*prom.rglob("*.yml"), *prom.rglob("*.yaml")]):
        if _is_rules_file(src):
            copies[CHART / "files" / "prometheus" / src.name] = src.read_bytes()
    promtail = MONITORING / "promtail" / "promtail.yaml"
    if promtail.exists():
        copies[CHART / "files" / "promtail" / promtail.name] = promtail.read_bytes()
    return copies


def stale() -> list[str]:
    """Copies missing or different, and files in files/ with no source any more."""
    copies = wanted()
    out = [str(p.relative_to(ROOT)) for p, data in copies.items()
           if not p.exists() or p.read_bytes() != data]
    for folder in ("dashboards", "prometheus", "promtail"):
        for path in sorted((CHART / "files" / folder).glob("*")):
            if path.name != ".gitkeep" and path not in copies:
                out.append(f"{path.relative_to(ROOT)} (no source)")
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = stale()
        for line in problems:
            print(f"out of date: {line}", file=sys.stderr)
        return 1 if problems else 0
    copies = wanted()
    for path, data in copies.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for folder in ("dashboards", "prometheus", "promtail"):
        for path in (CHART / "files" / folder).glob("*"):
            if path.name != ".gitkeep" and path not in copies:
                path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

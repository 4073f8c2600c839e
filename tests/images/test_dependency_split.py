"""Each image holds only its component's extra of pyproject.toml, and that is enough.

Inside each built image (read-only, uid 10001, no network): every module of cryptex_common
and of the component imports (a module-level import of a missing dependency fails here; the
lazy ones are exercised by test_images.py, which runs each service); the distributions of
the other components' extras are absent (the engine has no asyncpg, kopf or kubernetes, the
API no kopf); and no other Cryptex package (launcher, client, another component) is inside.
The expected sets come from pyproject.toml, so a new dependency is checked without editing
this test.
"""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.images.conftest import COMPONENTS, Images
from tests.images.podman import HARDENED, ROOT, podman

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PACKAGES = ("cryptex_common", "cryptex_client", "cryptex_launcher",
            *(f"cryptex_{c}" for c in COMPONENTS))

PROBE = """
import importlib, importlib.metadata as md, importlib.util, json, pkgutil, sys
component, forbidden, packages = sys.argv[1], sys.argv[2:-1], sys.argv[-1].split(",")
imported = []
for top in ("cryptex_common", "cryptex_" + component):
    pkg = importlib.import_module(top)
    imported.append(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.name.endswith(".__main__"):
            continue  # runs main(); test_images.py starts it
        importlib.import_module(info.name)
        imported.append(info.name)
def has(dist):
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False
print(json.dumps({
    "imported": imported,
    "forbidden_present": [d for d in forbidden if has(d)],
    "packages": [p for p in packages if importlib.util.find_spec(p) is not None],
    "distributions": sorted(d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()),
}))
"""


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def extra(component: str) -> set[str]:
    return {requirement_name(r) for r in PROJECT["optional-dependencies"][component]}


def test_every_component_has_its_extra_and_test_installs_them_all() -> None:
    extras = PROJECT["optional-dependencies"]
    assert set(COMPONENTS) <= set(extras)
    everything = "cryptex[" + ",".join(COMPONENTS) + "]"
    assert everything in extras["all"] and "cryptex[all]" in extras["test"]
    shared = {requirement_name(r) for r in PROJECT["dependencies"]}
    assert not shared & {"asyncpg", "kopf", "kubernetes"}, "only what every component imports is shared"


@pytest.mark.parametrize("component", COMPONENTS)
def test_image_holds_only_its_extra_and_imports_every_module(component: str, images: Images) -> None:
    own = extra(component)
    forbidden = set().union(*(extra(c) for c in COMPONENTS)) - own
    if component == "engine":
        assert forbidden >= {"asyncpg", "kopf", "kubernetes"}
    if component == "api":
        assert "kopf" in forbidden
    proc = podman("run", "--rm", "--network=none", *HARDENED, "--entrypoint", "python",
                  images[component], "-c", PROBE, component, *sorted(forbidden), ",".join(PACKAGES),
                  timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = json.loads(proc.stdout)
    assert found["forbidden_present"] == [], found
    assert set(found["packages"]) == {"cryptex_common", f"cryptex_{component}"}
    assert len(found["imported"]) >= 3, found["imported"]
    shared = {requirement_name(r) for r in PROJECT["dependencies"]}
    assert shared | own <= set(found["distributions"]), (shared | own, found["distributions"])

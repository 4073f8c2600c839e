"""Architecture rules, checked on the source: the engine's matching core does no I/O, apps
never import each other, libs/ never imports an app, and everything passes ruff and mypy."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {
    "cryptex_api": ROOT / "apps/api/cryptex_api",
    "cryptex_engine": ROOT / "apps/engine/cryptex_engine",
    "cryptex_wsgateway": ROOT / "apps/wsgateway/cryptex_wsgateway",
    "cryptex_dbproc": ROOT / "apps/dbproc/cryptex_dbproc",
    "cryptex_operator": ROOT / "operator/cryptex_operator",
}
LIBS = ROOT / "libs"
# What the pure core may import: the standard library's pure parts and the pure common modules
# (not cryptex_common.keys: Redis names are the service's business; the fee account is data).
CORE_ALLOWED = {"__future__", "dataclasses", "enum", "typing", "collections", "bisect", "hashlib",
                "json", "itertools", "heapq", "operator", "functools", "math", "cryptex_engine.domain",
                "cryptex_common.markets", "cryptex_common.messages", "cryptex_common.errors"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_matching_core_imports_no_io() -> None:
    core = ROOT / "apps/engine/cryptex_engine/domain"
    paths = sorted(core.rglob("*.py"))
    assert len(paths) >= 5, "the core moved: point this test at it"
    for path in paths:
        for module in imports(path):
            allowed = any(module == a or module.startswith(a + ".") for a in CORE_ALLOWED)
            assert allowed, f"{path.relative_to(ROOT)} imports {module}: the core must stay pure"


def test_services_never_import_each_other() -> None:
    for name, folder in SERVICES.items():
        for path in folder.rglob("*.py"):
            for module in imports(path):
                other = module.split(".")[0]
                assert other == name or other not in SERVICES, (
                    f"{path.relative_to(ROOT)} imports {module}: services share only cryptex_common"
                )


def test_libs_import_no_app() -> None:
    """Every package under libs/ (common, client, launcher, and any new one): the launcher
    runs apps as processes (`python -m cryptex_engine replay`), it never imports them."""
    paths = sorted(LIBS.rglob("*.py"))
    assert {p.relative_to(LIBS).parts[0] for p in paths} >= {"common", "client", "launcher"}
    for path in paths:
        for module in imports(path):
            assert module.split(".")[0] not in SERVICES, f"{path.relative_to(ROOT)} imports {module}"


def test_the_rules_see_imports_wherever_they_are(tmp_path: Path) -> None:
    """The checks above read the source with `imports`: nested and guarded imports count."""
    path = tmp_path / "sample.py"
    path.write_text("import os\nif x:\n    from cryptex_engine.replay import main\n"
                    "def f():\n    import cryptex_api.app\n")
    assert imports(path) == {"os", "cryptex_engine.replay", "cryptex_api.app"}


@pytest.mark.integration
def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed (it is in the test extras)")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.integration
def test_mypy_is_clean() -> None:
    packages = ["cryptex_common", "cryptex_client", "cryptex_launcher", "cryptex_api", "cryptex_dbproc",
                "cryptex_wsgateway", "cryptex_engine", "cryptex_operator"]
    args = [sys.executable, "-m", "mypy", *[a for p in packages for a in ("-p", p)]]
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:]

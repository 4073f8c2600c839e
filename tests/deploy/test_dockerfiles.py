"""Static checks of the Dockerfiles and .dockerignore: three stages on one base chosen by
`ARG PYTHON_IMAGE` (default the official slim image), only the component's extra installed,
a numeric non-root user, only the component's own package and the common one copied, the
entrypoint the component is run with. tests/images builds and runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "apps/api/Dockerfile": ("apps/api", "cryptex_api"),
    "apps/wsgateway/Dockerfile": ("apps/wsgateway", "cryptex_wsgateway"),
    "apps/engine/Dockerfile": ("apps/engine", "cryptex_engine"),
    "apps/dbproc/Dockerfile": ("apps/dbproc", "cryptex_dbproc"),
    "operator/Dockerfile": ("operator/cryptex_operator", "cryptex_operator"),
}


@pytest.mark.parametrize("path", list(IMAGES))
def test_dockerfile(path: str) -> None:
    text = (ROOT / path).read_text()
    source, module = IMAGES[path]
    assert re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M) == ["python:3.11-slim"]
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["${PYTHON_IMAGE}"] * 3, froms
    extra = module.removeprefix("cryptex_")
    assert f'["optional-dependencies"]["{extra}"]' in text  # only its own extra
    assert "RUN /venv/bin/pip install --no-deps . " in text
    copies = re.findall(r"^COPY (?!--from)(\S+) ", text, re.M)
    assert copies == ["pyproject.toml", "pyproject.toml", "libs/common", source]
    assert "COPY --from=requirements /requirements.txt /tmp/requirements.txt" in text
    assert (ROOT / source / module.split("/")[-1]).exists() or (ROOT / source).exists()
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user == ["10001:10001"]
    assert f'ENTRYPOINT ["python", "-m", "{module}"]' in text
    assert "COPY --from=build --chown=10001:10001 /venv /venv" in text


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert next(line for line in lines if not line.startswith("#")) == "**"
    allowed = [line[1:] for line in lines if line.startswith("!")]
    for source, module in IMAGES.values():
        pkg = source if source.endswith(module) else f"{source}/{module}"
        assert f"{pkg}/**" in allowed
    assert "libs/common/**" in allowed and "pyproject.toml" in allowed

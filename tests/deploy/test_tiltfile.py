"""The Tiltfile, parsed and run by a real Starlark interpreter (starlark-pyo3) with recording
stand-ins for Tilt's builtins, then cross-checked against the chart (helm template with
values-dev.yaml), the Dockerfiles and the files on disk.

Proves: it parses, calls only the builtins Tilt has (an unknown one fails), and every image,
resource, path and port it names exists. Does not prove: that `tilt up` works (no Tilt,
kind or Docker here), nor what the restart_process extension does.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import starlark as sl
import yaml

from tests.deploy.conftest import ROOT, by_kind, render

TILT_BUILTINS = (
    "allow_k8s_contexts", "docker_build", "sync", "run", "fall_back_on", "local_resource",
    "k8s_yaml", "helm", "k8s_resource", "link", "read_yaml_stream", "encode_yaml_stream",
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self.calls if n == name]

    def stub(self, name: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if name == "helm":
                return "<helm output>"
            if name == "read_yaml_stream":
                path = ROOT / args[0]
                return list(yaml.safe_load_all(path.read_text()))
            if name == "encode_yaml_stream":
                return yaml.safe_dump_all(args[0])
            if name in ("sync", "run", "fall_back_on", "link"):
                return {"step": name, "args": list(args)}
            return None
        call.__name__ = name
        return call


def run_tiltfile(source: str) -> Recorder:
    rec = Recorder()
    module = sl.Module()
    for name in TILT_BUILTINS:
        module.add_callable(name, rec.stub(name))
    module["TRIGGER_MODE_AUTO"] = 1
    module["TRIGGER_MODE_MANUAL"] = 2

    def load(path: str) -> sl.FrozenModule:
        assert path == "ext://restart_process", f"unexpected load {path}"
        ext = sl.Module()
        ext.add_callable("docker_build_with_restart", rec.stub("docker_build_with_restart"))
        return ext.freeze()

    ast = sl.parse("Tiltfile", source, sl.Dialect.extended())
    sl.eval(module, ast, sl.Globals.standard(), sl.FileLoader(load))
    return rec


@pytest.fixture(scope="module")
def tilt() -> Recorder:
    return run_tiltfile((ROOT / "Tiltfile").read_text())


def test_tiltfile_lints_clean() -> None:
    ast = sl.parse("Tiltfile", (ROOT / "Tiltfile").read_text(), sl.Dialect.extended())
    assert [str(lint) for lint in ast.lint()] == []


def test_unknown_builtin_fails() -> None:
    with pytest.raises(sl.StarlarkError):
        run_tiltfile("k8s_resorce('cryptex-api')")


def test_images_match_the_chart_and_the_dockerfiles(tilt: Recorder, helm: str) -> None:
    docs = render(helm, "values-dev.yaml")
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"]}
    built = tilt.named("docker_build_with_restart")
    assert {a[0] for a, _ in built} == {"cryptex/api", "cryptex/wsgateway", "cryptex/dbproc",
                                        "cryptex/operator"}
    for args, kw in built:
        assert any(img.split(":")[0] == args[0] for img in images), args[0]
        dockerfile = (ROOT / kw["dockerfile"]).read_text()
        module = kw["entrypoint"][-1]
        assert f'ENTRYPOINT ["python", "-m", "{module}"]' in dockerfile
        for path in kw["only"]:
            assert (ROOT / path).exists(), path
        syncs = [s["args"] for s in kw["live_update"] if s["step"] == "sync"]
        for src, dest in syncs:
            assert (ROOT / src).is_dir(), src
            assert dest.endswith("/site-packages/" + src.split("/")[-1])
    # The operator's engines use the image the local resource builds and loads into kind.
    op = by_kind(docs, "Deployment")["cryptex-operator"]
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    (engine,) = [kw for a, kw in tilt.named("local_resource") if a[0] == "engine-image"]
    assert f"-t {env['CRYPTEX_ENGINE_IMAGE']} " in engine["cmd"]
    assert env["CRYPTEX_ENGINE_IMAGE_PULL_POLICY"] == "Never"


def test_resources_name_rendered_workloads(tilt: Recorder, helm: str) -> None:
    docs = render(helm, "values-dev.yaml")
    workloads = {d["metadata"]["name"]: d for d in docs
                 if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")}
    local = {a[0] for a, _ in tilt.named("local_resource")}
    named = {}
    for args, kw in tilt.named("k8s_resource"):
        if args:
            assert args[0] in workloads, f"k8s_resource({args[0]!r}) names no workload"
            named[args[0]] = kw
        else:
            named[kw["new_name"]] = kw
    assert set(workloads) <= set(named), "every workload is grouped in Tilt"
    for name, kw in named.items():
        for dep in kw.get("resource_deps", []):
            assert dep in named or dep in local, (name, dep)
        for forward in kw.get("port_forwards", []):
            remote = int(forward.split(":")[1])
            ports = {p["containerPort"] for c in
                     workloads[name]["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            assert remote in ports, (name, forward)


def test_chart_and_manifests_exist(tilt: Recorder) -> None:
    ((chart,), kw) = tilt.named("helm")[0]
    assert (ROOT / chart / "Chart.yaml").exists()
    assert all((ROOT / v).exists() for v in kw["values"])
    assert kw["namespace"] == "cryptex"
    markets = []
    for (arg,), _ in tilt.named("k8s_yaml"):
        if arg == "<helm output>":
            continue
        if isinstance(arg, str) and arg.endswith(".yaml") and "\n" not in arg:
            assert (ROOT / arg).exists(), arg
        else:
            markets += [d for d in yaml.safe_load_all(arg) if d and d["kind"] == "Market"]
    assert {m["metadata"]["name"] for m in markets} == {
        p.stem for p in (ROOT / "k8s/examples").glob("*.yaml")}
    assert {m["metadata"]["namespace"] for m in markets} == {"cryptex"}
    (grouped,) = [kw for a, kw in tilt.named("k8s_resource") if kw.get("objects")]
    assert {o.split(":")[0] for o in grouped["objects"]} == {m["metadata"]["name"]
                                                              for m in markets}


def test_local_resources_watch_real_paths(tilt: Recorder) -> None:
    for _args, kw in tilt.named("local_resource"):
        for dep in kw.get("deps", []):
            assert (ROOT / dep).exists(), dep
    (engine,) = [kw for a, kw in tilt.named("local_resource") if a[0] == "engine-image"]
    assert re.search(r"kind load docker-image \S+ --name cryptex", engine["cmd"])
    assert yaml.safe_load((ROOT / "kind-config.yaml").read_text())["name"] == "cryptex"

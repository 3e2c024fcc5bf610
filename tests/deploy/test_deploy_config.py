"""deploy/ checked offline with the tools a cluster and Compose would use: every overlay that kustomize
builds is valid Kubernetes 1.32 (strict), every YAML file passes yamllint, the Compose file matches the
Compose specification's schema (no docker compose plugin here), nginx accepts its config, and the pod's
drain fits its termination grace period."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import nginx_front
from tests.conftest import free_loopback_port

DEPLOY = Path(__file__).parents[2] / "deploy"
BIN = Path(sys.executable).parent
OVERLAYS = ["cpu", "gpu"]


def _run(*command: str | Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command], input=stdin, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _kustomize(overlay: str) -> list[dict[str, object]]:
    built = _run("kubectl", "kustomize", DEPLOY / "k8s" / "overlays" / overlay)
    _run(BIN / "kubernetes-validate", "--strict", "-k", "1.32.0", "-", stdin=built)
    return [d for d in yaml.safe_load_all(built) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_valid_manifests(overlay: str) -> None:
    kinds = {str(d["kind"]) for d in _kustomize(overlay)}
    assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_drain_fits_the_termination_grace_period(overlay: str) -> None:
    documents = _kustomize(overlay)
    (deployment,) = (d for d in documents if d["kind"] == "Deployment")
    (settings,) = (d for d in documents if d["kind"] == "ConfigMap")
    pod = deployment["spec"]["template"]["spec"]  # type: ignore[index]
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(settings["data"]["RAG_GRPC_SHUTDOWN_GRACE_S"])  # type: ignore[index]
    assert pre_stop + grace + 5 <= pod["terminationGracePeriodSeconds"]
    services = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "Service"}  # type: ignore[index]
    assert services["rag-grpc-headless"]["clusterIP"] == "None"
    assert all(
        p["appProtocol"] == "kubernetes.io/h2c"
        for s in services.values()
        for p in s["ports"]
        if p["name"] == "grpc"
    )
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["nodeSelector"]


def test_every_yaml_file_passes_yamllint() -> None:
    _run(BIN / "yamllint", "-s", "-c", DEPLOY / ".yamllint.yaml", DEPLOY)


def test_compose_file_matches_the_compose_schema() -> None:
    compose = DEPLOY / "compose" / "compose.yaml"
    _run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", compose)
    services = yaml.safe_load(compose.read_text())["services"]
    assert {"rag-grpc", "milvus", "redis", "prometheus", "grafana", "vllm", "nginx"} <= set(services)
    # Keys come from a secret, not from the file.
    assert "RAG_GRPC_API_KEYS" not in services["rag-grpc"]["environment"]
    assert services["rag-grpc"]["secrets"] == ["rag_grpc_api_keys"]


def test_nginx_accepts_its_config(tmp_path: Path) -> None:
    conf = nginx_front.render(tmp_path, ["127.0.0.1:1", "127.0.0.1:2"], free_loopback_port())
    checked = nginx_front.check(conf)
    assert checked.returncode == 0, checked.stderr

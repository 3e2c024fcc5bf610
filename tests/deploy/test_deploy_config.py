"""deploy/ checked offline with the tools a cluster and Compose would use: every overlay that kustomize
builds is valid Kubernetes 1.32 (strict), every YAML file passes yamllint, the Compose file matches the
Compose specification's schema (no docker compose plugin here), nginx accepts its config, and the pod's
drain fits its termination grace period."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from bench import nginx_front
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.conftest import free_loopback_port

DEPLOY = Path(__file__).parents[2] / "deploy"
BIN = Path(sys.executable).parent
OVERLAYS = ["cpu", "gpu", "remote"]


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
    if overlay == "remote":
        data = settings["data"]  # type: ignore[index]
        assert data["RAG_GRPC_GENERATOR_BACKEND"] == "remote" and data["RAG_GRPC_GENERATOR_ENDPOINTS"]
        # The workers' key is a Secret reference, never a ConfigMap value.
        assert "RAG_GRPC_GENERATOR_API_KEY" not in data
        (key,) = (e for e in container["env"] if e["name"] == "RAG_GRPC_GENERATOR_API_KEY")
        assert key["valueFrom"]["secretKeyRef"]["name"] == "rag-grpc-generator"


def test_every_yaml_file_passes_yamllint() -> None:
    _run(BIN / "yamllint", "-s", "-c", DEPLOY / ".yamllint.yaml", DEPLOY)


def test_compose_file_matches_the_compose_schema() -> None:
    compose = DEPLOY / "compose" / "compose.yaml"
    _run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", compose)
    services = yaml.safe_load(compose.read_text())["services"]
    assert {"rag-grpc", "milvus", "redis", "prometheus", "grafana", "vllm", "nginx"} <= set(services)
    # Keys come from secrets, not from the file.
    server = services["rag-grpc"]
    environment = server["environment"]
    assert not {"RAG_GRPC_API_KEYS", "RAG_GRPC_GENERATOR_API_KEY"} & set(environment)
    assert set(server["secrets"]) == {"rag_grpc_api_keys", "generator_api_key"}
    assert "/run/secrets/generator_api_key" in " ".join(server["entrypoint"])
    # rag-grpc generates on the Compose file's vLLM workers, which share its key.
    assert environment["RAG_GRPC_GENERATOR_BACKEND"] == "remote"
    for url in environment["RAG_GRPC_GENERATOR_ENDPOINTS"].split(","):
        scheme, host, port = url.split("/v1")[0].replace("//", "").split(":")
        worker = services[host]
        assert "generator_api_key" in worker["secrets"] and worker["healthcheck"]
        assert f"--port {port}" in " ".join(worker["command"]) and scheme in ("http", "grpc")
        assert environment["RAG_GRPC_GENERATOR_SERVED_MODEL"] in worker["command"]
        assert server["depends_on"][host]["condition"] == "service_healthy"


def test_nginx_accepts_its_config(tmp_path: Path) -> None:
    conf = nginx_front.render(tmp_path, ["127.0.0.1:1", "127.0.0.1:2"], free_loopback_port())
    checked = nginx_front.check(conf)
    assert checked.returncode == 0, checked.stderr


async def test_nginx_answers_a_lost_call_with_a_retryable_unavailable(tmp_path: Path) -> None:
    """nginx's own 502 (here: no replica listens) reaches gRPC clients as a trailers-only UNAVAILABLE,
    which their retry policy retries. nginx's HTML 502 page has headers and a body: in drains, clients
    ended some such calls as UNAVAILABLE without retrying them."""
    retry = {
        "methodConfig": [
            {
                "name": [{"service": "rag_grpc.v1.EmbedService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.01s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    dead = f"127.0.0.1:{free_loopback_port()}"
    with nginx_front.NginxFront(tmp_path, [dead], free_loopback_port()) as front:
        options = [("grpc.service_config", json.dumps(retry))]
        async with grpc.aio.insecure_channel(front.address, options=options) as channel:
            call = pb_grpc.EmbedServiceStub(channel).Embed(pb.EmbedRequest(texts=["x"]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await call
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
            assert lost.value.details() == "no replica answered; retry"
    # Each attempt of the client's retry policy reached nginx, which tried the replica once per attempt.
    errors = (tmp_path / "error.log").read_text()
    assert errors.count("connect() failed") == 3, errors

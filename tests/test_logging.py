"""configure_logging, in a child process of its own (it changes process-wide state): with JSON on, what
the libraries write (stdlib logging, warnings, progress bars) and uncaught exceptions are JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What a model load and a server's life write besides our own events, each from where it comes from.
PROGRAM = """
import logging, sys, warnings
from rag_grpc.logging import configure_logging
configure_logging("info", json=sys.argv[1] == "json")
import structlog
from tqdm.auto import tqdm
from transformers.utils.logging import get_logger, tqdm as transformers_tqdm
structlog.get_logger().info("ours", answer=42)
for _ in tqdm(range(3), desc="plain tqdm bar"):  # as the GGUF dequantization does
    pass
for _ in transformers_tqdm(range(3), desc="Loading weights"):
    pass
get_logger("transformers.modeling_utils").warning("from transformers")
logging.getLogger("huggingface_hub.file_download").warning("from huggingface_hub")
logging.getLogger("urllib3.connectionpool").info("below WARNING: not shown")
warnings.warn("from warnings")
raise RuntimeError("escaped main")
"""


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    # Progress bars are left to configure_logging to turn off.
    unset = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in unset},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_json_mode_writes_only_json_lines() -> None:
    result = _run("json")
    assert result.returncode == 1  # the uncaught exception
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # fails on any non-JSON line
    by_event = {line["event"]: line for line in lines}
    assert by_event["ours"]["answer"] == 42
    assert by_event["from transformers"]["logger"] == "transformers.modeling_utils"
    assert by_event["from huggingface_hub"]["level"] == "warning"
    assert by_event["uncaught_exception"]["level"] == "critical"
    assert "RuntimeError: escaped main" in by_event["uncaught_exception"]["exception"]
    assert any("from warnings" in line["event"] and line["logger"] == "py.warnings" for line in lines)
    assert all(line["timestamp"].endswith("Z") for line in lines)
    assert not any("not shown" in line["event"] for line in lines)


def test_human_mode_stays_readable_and_keeps_progress_bars() -> None:
    result = _run("human")
    assert "[warning  ] from transformers" in result.stderr
    assert "Loading weights: 100%" in result.stderr
    assert "RuntimeError: escaped main" in result.stderr

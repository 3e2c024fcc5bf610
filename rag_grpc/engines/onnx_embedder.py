"""int8 embedder: the sentence-transformers model exported to ONNX and dynamically quantized, run by ONNX Runtime.

Why not sentence-transformers' own `backend="onnx"` and `export_dynamic_quantized_onnx_model`: both go
through optimum-onnx, whose only release (0.1.0) needs transformers < 4.58, and this project pins
transformers 5.16-5.19 for vLLM. The same two steps are done here directly: torch.onnx's TorchScript
exporter writes the transformer, ONNX Runtime's `quantize_dynamic` turns its weight matrices into int8
(no calibration data: activations are quantized per call from their own range), and the pooling and
normalization that sentence-transformers would apply (mean over the attention mask, unit length) are
done in numpy. Only mean-pooled, normalized models are accepted; all-MiniLM-L6-v2 is one.

The quantized model is exported at first start and cached under `model_cache_dir`, in a directory named
after the source model, the CPU configuration and the exporter's version; it is written to a temporary
directory and renamed into place, so a crash mid-export never leaves a half model.

Quantization choices, measured on bench/qa's 298 documents and 150 questions (tests/engines/
test_onnx_embedder.py checks the bounds): per-channel weight scales (a per-tensor scale cost ~0.01 of
cosine); the attention's activation x activation MatMuls stay float32 (quantizing them was slower and
no more accurate); weights are uint8 on CPUs without AVX-512 VNNI, since ONNX Runtime's u8s8 kernels
there saturate their int16 sums (int8 weights then need reduce_range, which lost accuracy), and int8
with VNNI.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import structlog

from rag_grpc.domain import EmbeddingBatch, EngineInfo

log = structlog.get_logger(__name__)

QuantizationConfig = Literal["avx2", "avx512_vnni"]
# Raise when the export or the quantization recipe changes, so that caches made by older code are not reused.
EXPORT_VERSION = 1
MODEL_FILE = "model_int8.onnx"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The files a sentence-transformers model directory keeps next to its weights that loading needs here.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "config.json",
    "sentence_bert_config.json",
    "modules.json",
)


def cpu_quantization_config(cpuinfo: Path = Path("/proc/cpuinfo")) -> QuantizationConfig:
    """avx512_vnni when the CPU has VNNI (int8 dot products in one instruction), else avx2."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return "avx2"
    return "avx512_vnni" if "avx512_vnni" in flags.split() else "avx2"


def _check_pooling(source: Path) -> int:
    """The model's max_seq_length; raises unless its pipeline is Transformer -> mean Pooling -> Normalize."""
    modules = json.loads((source / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    mean = False
    if kinds == ["Transformer", "Pooling", "Normalize"]:
        pooling = json.loads((source / modules[1]["path"] / "config.json").read_text())
        mean = (
            bool(pooling.get("pooling_mode_mean_tokens"))
            and sum(bool(v) for k, v in pooling.items() if k.startswith("pooling_mode_")) == 1
        )
    if not mean:
        raise ValueError(
            f"embedder_precision=int8 supports mean-pooled, normalized sentence-transformers models; "
            f"{source} has modules {kinds}"
        )
    return int(json.loads((source / "sentence_bert_config.json").read_text())["max_seq_length"])


def quantized_model_dir(
    source: Path, cache_dir: Path, model_id: str, config: QuantizationConfig | None = None
) -> Path:
    """The cached int8 export of `source`, made once (tens of seconds on 2 cores); later starts reuse it."""
    import onnxruntime

    config = config or cpu_quantization_config()
    _check_pooling(source)
    weights = source / "model.safetensors"
    size = weights.stat().st_size if weights.exists() else 0
    name = f"{Path(model_id).name}-{size}-int8-{config}-ort{onnxruntime.__version__}-v{EXPORT_VERSION}"
    target = cache_dir / name
    if (target / MODEL_FILE).exists():
        return target
    log.info("quantizing_embedder", source=str(source), target=str(target), config=config)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".quantize-", dir=cache_dir))
    try:
        _export(source, staging, config)
        os.replace(staging, target)
    except OSError:
        if (target / MODEL_FILE).exists():  # another process won the race
            return target
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _export(source: Path, out: Path, config: QuantizationConfig) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(source), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            output = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return output.last_hidden_state  # type: ignore[no-any-return]

    # Two texts of different lengths, so the traced graph keeps the padding mask's general path.
    sample = tokenizer(
        ["a short one", "and a somewhat longer second text"], padding=True, return_tensors="pt"
    )
    float_model = out / "model_float32.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    with torch.no_grad():
        torch.onnx.export(
            LastHiddenState(model),
            tuple(sample[name] for name in _INPUTS),
            str(float_model),
            input_names=list(_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    import onnx

    graph = onnx.load(str(float_model), load_external_data=False).graph
    # Activation x activation products (attention scores and their weighted sum) stay float32.
    initializers = {init.name for init in graph.initializer}
    dynamic_matmuls = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and not any(name in initializers for name in node.input)
    ]
    quantize_dynamic(
        str(float_model),
        str(out / MODEL_FILE),
        weight_type=QuantType.QInt8 if config == "avx512_vnni" else QuantType.QUInt8,
        per_channel=True,
        reduce_range=False,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=dynamic_matmuls,
    )
    float_model.unlink()
    for name in _TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, out / name)
    modules = json.loads((source / "modules.json").read_text())
    shutil.copytree(source / modules[1]["path"], out / modules[1]["path"])
    (out / "quantization.json").write_text(
        json.dumps({"source": str(source), "config": config, "export_version": EXPORT_VERSION})
    )


class OnnxInt8Embedder:
    """Same contract as SentenceTransformerEmbedder (one worker thread owns the session and tokenizer)."""

    def __init__(
        self,
        source: Path,
        cache_dir: Path,
        model_id: str,
        batch_size: int = 64,
        threads: int = 0,
        config: QuantizationConfig | None = None,
    ) -> None:
        self._source = source
        self._cache_dir = cache_dir
        self._model_id = model_id
        self._batch_size = batch_size
        self._threads = threads
        self._config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._session: Any = None
        self._tokenizer: Any = None
        self._max_tokens = 0
        self._dimension = 0
        self.model_dir: Path | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._session = None

    def _load(self) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        model_dir = quantized_model_dir(self._source, self._cache_dir, self._model_id, self._config)
        options = onnxruntime.SessionOptions()
        if self._threads:
            options.intra_op_num_threads = self._threads
        # ONNX Runtime's workers spin between operators by default, taking the cores that the event loop
        # (gRPC, micro-batching) needs between batches; in the server that cost more than it saved.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._max_tokens = _check_pooling(model_dir)
        # The fast tokenizer's own file, without transformers (whose import alone takes seconds).
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        pad = json.loads((model_dir / "tokenizer_config.json").read_text()).get("pad_token", "[PAD]")
        pad = pad["content"] if isinstance(pad, dict) else pad
        tokenizer.enable_truncation(max_length=self._max_tokens)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad), pad_token=pad)
        self._tokenizer = tokenizer
        self._dimension = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        self.model_dir = model_dir

    async def check_health(self) -> None:
        """Always healthy once started: the session lives in this process."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(backend="onnxruntime", model=f"{self._model_id}-int8", device="cpu")

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_input_tokens(self) -> int:
        return self._max_tokens

    async def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, list(texts))

    def _encode(self, texts: list[str]) -> EmbeddingBatch:
        vectors = np.empty((len(texts), self._dimension), dtype=np.float32)
        counts = [0] * len(texts)
        # Longest first, as sentence-transformers does, so each batch pads to similar lengths.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            encodings = self._tokenizer.encode_batch([texts[i] for i in chunk])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            hidden = self._session.run(None, feeds)[0]
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            vectors[chunk] = pooled
            for row, i in enumerate(chunk):
                counts[i] = int(feeds["attention_mask"][row].sum())
        return EmbeddingBatch(vectors=vectors, token_counts=counts)

"""Embedder backed by sentence-transformers.

The model and its fast tokenizer are not safe to call from several threads at once ("Already
borrowed"), so one worker thread owns them and every call is queued to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import numpy as np

from rag_grpc.domain import EmbeddingBatch, EngineInfo


class SentenceTransformerEmbedder:
    def __init__(self, model_path: str, device: str, model_id: str, batch_size: int = 64) -> None:
        self._model_path = model_path
        self._device = device
        self._model_id = model_id
        self._batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._model: Any = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._executor, self._load)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(self._model_path, device=self._device, local_files_only=True)
        model.eval()
        return model

    async def check_health(self) -> None:
        """Always healthy once started: the model lives in this process and has no worker of its own to lose."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(backend="sentence-transformers", model=self._model_id, device=self._device)

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())

    @property
    def max_input_tokens(self) -> int:
        return int(self._model.max_seq_length)

    async def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        # run_in_executor drops the job from the queue if the caller is cancelled before it starts.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, list(texts))

    def _encode(self, texts: list[str]) -> EmbeddingBatch:
        model = self._model
        vectors = model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        encoded = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
        counts = [len(ids) for ids in encoded["input_ids"]]
        return EmbeddingBatch(vectors=np.ascontiguousarray(vectors, dtype=np.float32), token_counts=counts)

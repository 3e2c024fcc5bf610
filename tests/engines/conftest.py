"""Fixtures for engine tests: the generator's model files, a separately loaded copy of the model that
serves as the reference (`model.generate`) the engine's outputs are compared with, `make_store`,
which runs the VectorStore contract tests against each backend, and the onnxruntime generator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rag_grpc.engines.base import Generator
from rag_grpc.engines.factory import build_generator
from rag_grpc.engines.faiss_store import FaissVectorStore
from rag_grpc.engines.milvus_store import MilvusVectorStore
from rag_grpc.settings import Settings

# A new, empty store of the given dimension, to be entered with `async with`.
StoreFactory = Callable[[int], FaissVectorStore | MilvusVectorStore]


@pytest.fixture(params=["faiss", "milvus"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Each backend in turn; Milvus stores are fresh collections on the session's milvus-lite server."""
    if request.param == "faiss":
        return lambda dimension: FaissVectorStore(dimension, "cpu")
    uri: str = request.getfixturevalue("milvus_uri")
    return lambda dimension: MilvusVectorStore(dimension, uri, f"test_{uuid.uuid4().hex}")


@dataclass
class ReferenceLM:
    model: Any
    tokenizer: Any
    _greedy_cache: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def prompt_ids(self, prompt: str) -> list[int]:
        ids: list[int] = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return ids

    def greedy(self, prompt: str, max_tokens: int) -> list[int]:
        """New tokens of plain, unbatched greedy `model.generate`, ending at the first end-of-sequence token."""
        if (prompt, max_tokens) not in self._greedy_cache:
            self._greedy_cache[prompt, max_tokens] = self._generate(prompt, max_tokens)
        return self._greedy_cache[prompt, max_tokens]

    def _generate(self, prompt: str, max_tokens: int) -> list[int]:
        input_ids = torch.tensor([self.prompt_ids(prompt)])
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        return [int(t) for t in output[0, input_ids.shape[1] :]]

    def text(self, tokens: list[int]) -> str:
        text: str = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return text


@pytest.fixture(scope="session")
def reference_lm(generator_model_dir: Path) -> ReferenceLM:
    tokenizer = AutoTokenizer.from_pretrained(str(generator_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(generator_model_dir), dtype=torch.float32).eval()
    return ReferenceLM(model, tokenizer)


@pytest.fixture(scope="session")
async def onnxruntime_generator(settings: Settings) -> AsyncIterator[Generator]:
    """generator_backend=onnxruntime (int4), started once per session; its model is built from the bundled
    one on the first run (~30 s) and reused from model_cache_dir afterwards."""
    generator = await build_generator(settings.with_overrides(generator_backend="onnxruntime"))
    async with generator:
        yield generator

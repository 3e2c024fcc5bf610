"""Rows of a causal LM decoded together over one left-padded KV cache.

Sequences join and leave between decode steps: a joining group is prefilled on its own (a Prefill,
read a chunk of columns at a time so that decode steps of the running batch can come in between) and
its cache is padded on the left to the running batch's length; a leaving row is cut out. Padding is
masked out of attention and every row carries its own position ids, so a row sees exactly the
tokens it would see alone (up to floating-point summation order in the padded attention).

Plain torch and transformers' DynamicCache; runs on the caller's thread, never concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PaddedBatch:
    def __init__(
        self, cache: DynamicCache, attention_mask: torch.Tensor, next_positions: torch.Tensor
    ) -> None:
        self._cache = cache
        # [rows, cached tokens]: 1 for a real token, 0 for left padding.
        self._attention_mask = attention_mask
        # [rows]: the position id each row's next token gets (its count of real tokens so far).
        self._next_positions = next_positions

    @property
    def size(self) -> int:
        return int(self._attention_mask.shape[0])

    @property
    def cached_tokens(self) -> int:
        return int(self._attention_mask.shape[1])

    @classmethod
    def prefill(cls, model: Any, prompts: Sequence[Sequence[int]]) -> tuple[PaddedBatch, torch.Tensor]:
        """Runs the prompts (left-padded to the longest) in one pass; returns the batch and each row's
        next-token logits."""
        reading = Prefill(model, prompts)
        logits = reading.step(model)
        assert logits is not None  # one chunk covers every column
        return reading.batch(), logits

    def decode(self, model: Any, next_tokens: torch.Tensor) -> torch.Tensor:
        """Feeds one token per row ([rows] long) and returns the next-token logits [rows, vocab]."""
        ones = torch.ones(
            (self.size, 1), dtype=self._attention_mask.dtype, device=self._attention_mask.device
        )
        self._attention_mask = torch.cat([self._attention_mask, ones], dim=1)
        output = model(
            input_ids=next_tokens.view(-1, 1),
            attention_mask=self._attention_mask,
            position_ids=self._next_positions.view(-1, 1),
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._cache = output.past_key_values
        self._next_positions = self._next_positions + 1
        logits: torch.Tensor = output.logits[:, -1, :].float()
        return logits

    def can_merge(self) -> bool:
        """Whether this cache holds only full-attention layers, whose tensors can be padded and concatenated."""
        return all(type(layer) is DynamicLayer for layer in self._cache.layers)

    def extend(self, joining: PaddedBatch) -> None:
        """Appends `joining`'s rows after this batch's rows, left-padding whichever cache is shorter."""
        length = max(self.cached_tokens, joining.cached_tokens)
        layers = [
            tuple(
                torch.cat([_left_pad(mine, length), _left_pad(theirs, length)], dim=0)
                for mine, theirs in zip(*pair, strict=True)
            )
            for pair in zip(self._kv_pairs(), joining._kv_pairs(), strict=True)
        ]
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._attention_mask = torch.cat(
            [_left_pad(self._attention_mask, length), _left_pad(joining._attention_mask, length)], dim=0
        )
        self._next_positions = torch.cat([self._next_positions, joining._next_positions])

    def keep(self, rows: Sequence[int]) -> None:
        """Keeps only `rows` (in that order) and drops the leading columns that are padding in all of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self._attention_mask.device)
        mask = self._attention_mask.index_select(0, index)
        real_columns = mask.any(dim=0).nonzero()
        first = int(real_columns[0]) if len(real_columns) else mask.shape[1]
        self._attention_mask = mask[:, first:]
        self._next_positions = self._next_positions.index_select(0, index)
        self._cache = DynamicCache(
            ddp_cache_data=[
                (keys.index_select(0, index)[:, :, first:], values.index_select(0, index)[:, :, first:])
                for keys, values in self._kv_pairs()
            ]
        )

    def _kv_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return _kv_pairs(self._cache)


class Prefill:
    """A group of prompts being read into a fresh cache, `chunk_columns` columns per step.

    A long prompt read in one pass stalls every running row for its whole duration and cannot be given
    up half-way; read in chunks, the scheduler can run decode steps and drop rows whose caller left
    between two chunks. Reading everything in one step computes exactly what a one-pass prefill does.
    """

    def __init__(
        self, model: Any, prompts: Sequence[Sequence[int]], chunk_columns: int | None = None
    ) -> None:
        longest = max(len(p) for p in prompts)
        # Padding positions hold token 0; the mask hides them from every real token.
        self._input_ids = torch.tensor(
            [[0] * (longest - len(p)) + list(p) for p in prompts], device=model.device
        )
        self._attention_mask = torch.tensor(
            [[0] * (longest - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=model.device
        )
        # The same position ids `generate` derives from a left-padded mask (padding gets a dummy 1).
        self._position_ids = (self._attention_mask.cumsum(-1) - 1).masked_fill_(self._attention_mask == 0, 1)
        self._config = model.config
        self._cache = DynamicCache(config=model.config)
        self._chunk = chunk_columns or longest
        self._done = 0  # columns already in the cache

    @property
    def size(self) -> int:
        return int(self._input_ids.shape[0])

    @property
    def finished(self) -> bool:
        return self._done == self._input_ids.shape[1]

    def step(self, model: Any, columns: int | None = None) -> torch.Tensor | None:
        """Reads the next chunk (`columns` wide, else the width given at construction); once the last one
        is read, returns each row's next-token logits."""
        end = min(self._done + (columns or self._chunk), int(self._input_ids.shape[1]))
        output = model(
            input_ids=self._input_ids[:, self._done : end],
            attention_mask=self._attention_mask[:, :end],
            position_ids=self._position_ids[:, self._done : end],
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._cache = output.past_key_values
        self._done = end
        if not self.finished:
            return None
        logits: torch.Tensor = output.logits[:, -1, :].float()
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        """Keeps only `rows` (in that order): the others' callers left while their prompts were read.

        Columns that are padding in every remaining row are dropped too, read or not: a short prompt
        grouped with long ones must not go on paying for their length once they are gone."""
        index = torch.tensor(rows, dtype=torch.long, device=self._input_ids.device)
        mask = self._attention_mask.index_select(0, index)
        real_columns = mask.any(dim=0).nonzero()
        first = int(real_columns[0]) if len(real_columns) else 0
        self._input_ids = self._input_ids.index_select(0, index)[:, first:]
        self._attention_mask = mask[:, first:]
        self._position_ids = self._position_ids.index_select(0, index)[:, first:]
        if self._done <= first:  # everything read so far was padding for the rows that stay
            self._cache = DynamicCache(config=self._config)
            self._done = 0
            return
        self._cache = DynamicCache(
            ddp_cache_data=[
                (keys.index_select(0, index)[:, :, first:], values.index_select(0, index)[:, :, first:])
                for keys, values in _kv_pairs(self._cache)
            ]
        )
        self._done -= first

    def batch(self) -> PaddedBatch:
        """The rows, ready to decode (once finished)."""
        assert self.finished
        return PaddedBatch(self._cache, self._attention_mask, self._attention_mask.sum(-1))


def _kv_pairs(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
        pairs.append((layer.keys, layer.values))
    return pairs


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pads a [rows, tokens] mask or a [rows, heads, tokens, dim] cache tensor on the left up to `length` tokens."""
    token_dim = 1 if tensor.dim() == 2 else 2
    missing = length - tensor.shape[token_dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[token_dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=token_dim)

"""Choosing each row's next token from its logits, with each request's own sampling options.

Greedy rows take the argmax. Sampled rows apply temperature, then top-k, then top-p (the order
transformers' `generate` uses) and draw from their own torch.Generator, so a seeded request draws
the same tokens whichever other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rag_grpc.domain import SamplingOptions


@dataclass(frozen=True, eq=False)
class TokenSampler:
    temperature: float
    top_p: float
    top_k: int
    # None for greedy decoding.
    generator: torch.Generator | None

    @classmethod
    def for_options(cls, options: SamplingOptions, device: torch.device | str) -> TokenSampler:
        if options.temperature <= 0:
            return cls(0.0, 1.0, 0, None)
        generator = torch.Generator(device=device)
        if options.seed is None:
            generator.seed()  # a fresh nondeterministic seed
        else:
            generator.manual_seed(options.seed)
        return cls(options.temperature, options.top_p, options.top_k, generator)


def sample_next_tokens(logits: torch.Tensor, samplers: Sequence[TokenSampler]) -> list[int]:
    """One token per row of `logits` [rows, vocab], row i chosen by `samplers[i]`."""
    tokens = logits.argmax(dim=-1)
    sampled_rows = [row for row, sampler in enumerate(samplers) if sampler.generator is not None]
    if sampled_rows:
        index = torch.tensor(sampled_rows, device=logits.device)
        drawn = _draw(logits.index_select(0, index), [samplers[row] for row in sampled_rows])
        tokens = tokens.index_copy(0, index, drawn)
    return tokens.tolist()


def _draw(logits: torch.Tensor, samplers: Sequence[TokenSampler]) -> torch.Tensor:
    device = logits.device
    vocab = logits.shape[-1]
    temperatures = torch.tensor([s.temperature for s in samplers], dtype=logits.dtype, device=device)
    scaled = logits / temperatures.unsqueeze(1)
    # Candidates best first. When every row has a top_k, the largest k bounds them and topk is far
    # cheaper than sorting the whole vocabulary.
    widest = max(s.top_k for s in samplers) if all(s.top_k > 0 for s in samplers) else vocab
    candidate_logits, candidate_ids = scaled.topk(min(widest, vocab), dim=-1, sorted=True)
    ranks = torch.arange(candidate_logits.shape[-1], device=device).unsqueeze(0)
    top_k = torch.tensor([s.top_k or vocab for s in samplers], device=device).unsqueeze(1)
    candidate_logits = candidate_logits.masked_fill(ranks >= top_k, float("-inf"))
    probs = candidate_logits.softmax(dim=-1)
    # Keep the smallest head whose mass reaches top_p: drop a token once the mass before it does.
    mass_before = probs.cumsum(dim=-1) - probs
    top_p = torch.tensor([s.top_p for s in samplers], dtype=probs.dtype, device=device).unsqueeze(1)
    probs = probs.masked_fill((mass_before >= top_p) & (ranks > 0), 0.0)
    choices = [
        torch.multinomial(probs[row], 1, generator=sampler.generator) for row, sampler in enumerate(samplers)
    ]
    return candidate_ids.gather(1, torch.stack(choices)).squeeze(1)

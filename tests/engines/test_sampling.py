"""Per-row token choice: greedy rows, and sampled rows honouring their own options and seeds."""

from __future__ import annotations

import torch

from rag_grpc.domain import SamplingOptions
from rag_grpc.engines.sampling import TokenSampler, sample_next_tokens


def _sampler(
    temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = 7
) -> TokenSampler:
    options = SamplingOptions(max_tokens=1, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    return TokenSampler.for_options(options, "cpu")


def _logits(rows: int = 4, vocab: int = 1000) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3


def test_greedy_rows_take_the_argmax() -> None:
    logits = _logits()
    assert sample_next_tokens(logits, [_sampler(temperature=0)] * 4) == logits.argmax(-1).tolist()


def test_top_k_one_and_a_tiny_top_p_are_greedy() -> None:
    logits = _logits()
    samplers = [
        _sampler(top_k=1),
        _sampler(top_p=1e-6),
        _sampler(top_k=1, seed=None),
        _sampler(top_p=1e-6, seed=3),
    ]
    assert sample_next_tokens(logits, samplers) == logits.argmax(-1).tolist()


def test_draws_stay_inside_top_k_and_top_p() -> None:
    logits = _logits(rows=2)
    top5 = set(logits[0].topk(5).indices.tolist())
    probs = logits[1].softmax(-1)
    ordered = probs.argsort(descending=True)
    nucleus_size = int((probs[ordered].cumsum(-1) < 0.9).sum()) + 1
    nucleus = set(ordered[:nucleus_size].tolist())
    assert 1 < nucleus_size < 100  # a real cut of the 1000-token vocabulary
    samplers = [_sampler(top_k=5, seed=None), _sampler(top_p=0.9, seed=None)]
    draws = [sample_next_tokens(logits, samplers) for _ in range(200)]
    assert {d[0] for d in draws} <= top5 and len({d[0] for d in draws}) > 1
    assert {d[1] for d in draws} <= nucleus and len({d[1] for d in draws}) > 1


def test_a_seeded_row_draws_the_same_tokens_whatever_shares_its_batch() -> None:
    logits = _logits()
    alone = [
        sample_next_tokens(logits[1:2], [sampler])[0] for sampler in [_sampler(seed=42)] for _ in range(20)
    ]
    seeded = _sampler(seed=42)
    companions = [_sampler(temperature=0), _sampler(seed=None, top_k=50), _sampler(seed=1, top_p=0.9)]
    together = [
        sample_next_tokens(logits, [companions[0], seeded, companions[1], companions[2]])[1]
        for _ in range(20)
    ]
    assert alone == together
    assert len(set(alone)) > 1  # it really samples

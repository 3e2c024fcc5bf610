"""PaddedBatch: rows joining and leaving a left-padded batch decode exactly what they decode alone."""

from __future__ import annotations

import pytest
import torch

from rag_grpc.engines.padded_batch import PaddedBatch, Prefill
from tests.engines.conftest import ReferenceLM

PROMPTS = [
    "What is the capital of France?",
    "Write a long story about a dragon who learns to bake bread. Use many details.",
    "Name three colours.",
    "Count from 1 to 20, separated by commas.",
]
NEW_TOKENS = 24


def _greedy_with_joins(
    lm: ReferenceLM, groups: list[list[int]], join_at_step: list[int]
) -> dict[int, list[int]]:
    """Greedy-decodes PROMPTS; group g is prefilled together and merged in before decode step join_at_step[g].

    A row leaves the batch as soon as it has NEW_TOKENS tokens or produced end-of-sequence, so rows
    also leave while others keep going.
    """
    produced: dict[int, list[int]] = {}
    batch: PaddedBatch | None = None
    rows: list[int] = []
    step = 0
    with torch.inference_mode():
        while step <= max(join_at_step) or rows:
            for group, join_step in zip(groups, join_at_step, strict=True):
                if join_step != step:
                    continue
                joined, logits = PaddedBatch.prefill(lm.model, [lm.prompt_ids(PROMPTS[i]) for i in group])
                for prompt_index, token in zip(group, logits.argmax(-1).tolist(), strict=True):
                    produced[prompt_index] = [token]
                if batch is None:
                    batch = joined
                else:
                    batch.extend(joined)
                rows += group
            done = {
                i
                for i in rows
                if len(produced[i]) >= NEW_TOKENS or produced[i][-1] == lm.tokenizer.eos_token_id
            }
            if done:
                kept = [k for k, i in enumerate(rows) if i not in done]
                rows = [rows[k] for k in kept]
                if not rows:
                    batch = None
                    step += 1
                    continue
                assert batch is not None
                batch.keep(kept)
            if batch is not None:
                last = torch.tensor([produced[i][-1] for i in rows])
                next_tokens = batch.decode(lm.model, last).argmax(-1).tolist()
                for prompt_index, token in zip(rows, next_tokens, strict=True):
                    produced[prompt_index].append(token)
            step += 1
    return produced


def test_solo_rows_decode_like_generate(reference_lm: ReferenceLM) -> None:
    for index in (0, 2):
        produced = _greedy_with_joins(reference_lm, [[index]], [0])
        assert produced[index] == reference_lm.greedy(PROMPTS[index], NEW_TOKENS)


def test_mixed_length_batch_and_staggered_joins_decode_like_unbatched_generate(
    reference_lm: ReferenceLM,
) -> None:
    expected = {i: reference_lm.greedy(p, NEW_TOKENS) for i, p in enumerate(PROMPTS)}
    # All four prompts (lengths differ) prefilled together in one left-padded batch.
    assert _greedy_with_joins(reference_lm, [[0, 1, 2, 3]], [0]) == expected
    # Groups join a running batch at later steps; the short answer to prompt 0 leaves early.
    assert _greedy_with_joins(reference_lm, [[1], [0, 3], [2]], [0, 3, 7]) == expected


def test_keep_trims_columns_that_are_padding_in_every_remaining_row(reference_lm: ReferenceLM) -> None:
    short, long = reference_lm.prompt_ids(PROMPTS[2]), reference_lm.prompt_ids(PROMPTS[1])
    with torch.inference_mode():
        batch, _ = PaddedBatch.prefill(reference_lm.model, [short, long])
        assert batch.cached_tokens == len(long)
        batch.keep([0])
    assert batch.size == 1 and batch.cached_tokens == len(short)


def test_a_prefill_read_in_chunks_with_a_row_dropped_half_way_decodes_like_generate(
    reference_lm: ReferenceLM,
) -> None:
    prompts = [reference_lm.prompt_ids(PROMPTS[i]) for i in (1, 0, 3)]
    with torch.inference_mode():
        reading = Prefill(reference_lm.model, prompts, chunk_columns=7)
        steps = 1
        logits = reading.step(reference_lm.model)
        reading.keep([0, 2])  # the caller of prompt 0 left during its prefill
        while logits is None:
            logits = reading.step(reference_lm.model)
            steps += 1
        assert steps == -(-max(len(p) for p in prompts) // 7)
        batch, produced = reading.batch(), [[token] for token in logits.argmax(-1).tolist()]
        for _ in range(NEW_TOKENS - 1):
            next_tokens = batch.decode(reference_lm.model, torch.tensor([p[-1] for p in produced]))
            for row, token in zip(produced, next_tokens.argmax(-1).tolist(), strict=True):
                row.append(token)
    for row, index in zip(produced, (1, 3), strict=True):
        expected = reference_lm.greedy(PROMPTS[index], NEW_TOKENS)
        assert row[: len(expected)] == expected


@pytest.mark.parametrize("chunk_columns", [3, 20])
def test_when_the_longest_prompt_leaves_half_way_the_rest_drop_its_padding_and_decode_like_generate(
    reference_lm: ReferenceLM, chunk_columns: int
) -> None:
    long, short = reference_lm.prompt_ids(PROMPTS[1]), reference_lm.prompt_ids(PROMPTS[2])
    padding = len(long) - len(short)
    # 3 columns: everything read so far is padding for the short row (its cache starts afresh);
    # 20 columns: some of its own tokens were read already (the cache keeps them, minus the padding).
    assert 3 < padding < 20
    with torch.inference_mode():
        reading = Prefill(reference_lm.model, [long, short], chunk_columns=chunk_columns)
        logits = reading.step(reference_lm.model)
        reading.keep([1])
        while logits is None:
            logits = reading.step(reference_lm.model)
        batch = reading.batch()
        assert batch.cached_tokens == len(short)
        produced = [int(logits.argmax(-1))]
        for _ in range(NEW_TOKENS - 1):
            produced.append(int(batch.decode(reference_lm.model, torch.tensor([produced[-1]])).argmax(-1)))
    expected = reference_lm.greedy(PROMPTS[2], NEW_TOKENS)
    assert produced[: len(expected)] == expected

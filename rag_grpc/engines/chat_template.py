"""Chat messages to prompt token ids, the one way every generator engine does it.

Both in-process engines (transformers, vLLM) and a remote worker that takes token ids render the
conversation with the model's own chat template, so the same request reads the same prompt wherever
it runs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from rag_grpc.domain import ChatMessage
from rag_grpc.errors import InvalidArgument


def control_tokens(tokenizer: Any) -> list[str]:
    """Every string the tokenizer turns into one added token wherever it appears in text.

    `all_special_tokens` is not enough: SmolLM2, for one, has 17 added tokens matched in text
    (`<repo_name>`, `<file_sep>`, ...) but lists only 3 as special.
    """
    added = set(tokenizer.get_added_vocab())
    return sorted(added | set(tokenizer.all_special_tokens))


class ChatTemplate:
    """A Hugging Face tokenizer's chat template, safe to call from several threads."""

    def __init__(self, tokenizer: Any, context_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        # None when the engine checks the context itself (vLLM refuses over-long prompts on its own).
        self._context_tokens = context_tokens
        # A fast tokenizer shared across threads can fail with "Already borrowed"; rendering is cheap.
        self._lock = threading.Lock()
        self.control_tokens: Sequence[str] = control_tokens(tokenizer)

    def render(self, messages: Sequence[ChatMessage], max_tokens: int) -> list[int]:
        """Prompt ids ending with the assistant turn's opening; raises InvalidArgument when the prompt and
        `max_tokens` new tokens would not fit in the model's context."""
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        with self._lock:
            ids = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        prompt = [int(i) for i in ids]
        if self._context_tokens is not None and len(prompt) + max_tokens > self._context_tokens:
            raise InvalidArgument(
                "prompt",
                f"is {len(prompt)} tokens; with sampling.max_tokens={max_tokens} "
                f"it exceeds the model's context of {self._context_tokens} tokens",
            )
        return prompt

    def decode(self, token_ids: list[int]) -> str:
        text: str = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return text

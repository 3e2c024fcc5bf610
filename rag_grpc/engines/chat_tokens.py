"""What both generators need to know about a Hugging Face tokenizer's chat format."""

from __future__ import annotations

from typing import Any


def control_tokens(tokenizer: Any) -> list[str]:
    """Every string the tokenizer turns into one added token wherever it appears in text.

    `all_special_tokens` is not enough: SmolLM2, for one, has 17 added tokens matched in text
    (`<repo_name>`, `<file_sep>`, ...) but lists only 3 as special.
    """
    added = set(tokenizer.get_added_vocab())
    return sorted(added | set(tokenizer.all_special_tokens))

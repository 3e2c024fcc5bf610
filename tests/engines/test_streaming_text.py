from __future__ import annotations

from transformers import AutoTokenizer

from rag_grpc.engines.model_files import BUNDLED_GENERATOR, converted_model_dir, resolve_generator_source
from rag_grpc.engines.streaming_text import IncrementalDecoder, StopSequenceFilter
from rag_grpc.settings import Settings


def _tokenizer():  # type: ignore[no-untyped-def]
    model_dir = converted_model_dir(
        resolve_generator_source(BUNDLED_GENERATOR), Settings(_env_file=None).engines.model_cache_dir
    )  # type: ignore[call-arg]
    return AutoTokenizer.from_pretrained(str(model_dir))


def test_incremental_decoding_reassembles_text_including_multibyte_characters() -> None:
    tokenizer = _tokenizer()
    text = "Café naïve — 東京 🚀 done."
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(lambda chunk: tokenizer.decode(chunk, skip_special_tokens=True))
    pieces = [decoder.push([token]) for token in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_filter_cuts_at_the_stop_sequence_across_chunk_boundaries() -> None:
    stop = StopSequenceFilter(["END"])
    out = [stop.push(p) for p in ["Hello E", "N", "D and more"]]
    assert "".join(out) == "Hello "
    assert stop.stopped
    assert stop.flush() == ""


def test_stop_filter_releases_held_text_that_did_not_become_a_stop() -> None:
    stop = StopSequenceFilter(["END"])
    assert stop.push("Hello EN") == "Hello "
    assert stop.push("Z") == "ENZ"
    assert stop.push(" E") == " "
    assert stop.flush() == "E"
    assert not stop.stopped


def test_stop_filter_picks_the_earliest_of_several() -> None:
    stop = StopSequenceFilter(["world", "lo"])
    assert stop.push("hello world") == "hel"


def test_without_stop_sequences_text_passes_through() -> None:
    stop = StopSequenceFilter([])
    assert stop.push("abc") == "abc"
    assert stop.flush() == ""

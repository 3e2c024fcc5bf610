"""The onnxruntime generator's model: built once into model_cache_dir, reused by later starts, and never
left half-built."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_grpc.engines.base import Generator
from rag_grpc.engines.quantized_model import ModelBuildError, builder_version, quantized_model_dir


def _writes_a_model(calls: list[str]):  # type: ignore[no-untyped-def]
    def build(source: Path, output: Path, precision: str, scratch: Path) -> None:
        calls.append(precision)
        output.mkdir(parents=True)
        (output / "model.onnx").write_bytes(b"onnx")

    return build


def _must_not_build(source: Path, output: Path, precision: str, scratch: Path) -> None:
    raise AssertionError("the model was built again")


def test_the_model_is_built_once_and_a_second_start_reuses_it(tmp_path: Path) -> None:
    calls: list[str] = []
    cache = tmp_path / "cache"

    first = quantized_model_dir(tmp_path / "SmolLM2", "int4", cache, builder=_writes_a_model(calls))
    second = quantized_model_dir(tmp_path / "SmolLM2", "int4", cache, builder=_must_not_build)

    assert first == second
    assert calls == ["int4"]
    assert first.name == f"SmolLM2-onnx-int4-ortgenai{builder_version()}"
    assert [path.name for path in cache.iterdir()] == [first.name]  # no staging directory left
    # Another precision is another model.
    assert quantized_model_dir(tmp_path / "SmolLM2", "int8", cache, builder=_writes_a_model(calls)) != first
    assert calls == ["int4", "int8"]


def test_a_failed_build_leaves_nothing_behind_and_the_next_start_builds_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def dies_halfway(source: Path, output: Path, precision: str, scratch: Path) -> None:
        output.mkdir(parents=True)
        (output / "model.onnx.data").write_bytes(b"half the weights")
        raise ModelBuildError("killed")

    with pytest.raises(ModelBuildError):
        quantized_model_dir(tmp_path / "SmolLM2", "int4", cache, builder=dies_halfway)
    assert list(cache.iterdir()) == []

    calls: list[str] = []
    built = quantized_model_dir(tmp_path / "SmolLM2", "int4", cache, builder=_writes_a_model(calls))
    assert calls == ["int4"]
    assert (built / "model.onnx").exists()


def test_the_real_builder_failing_leaves_nothing_behind(tmp_path: Path) -> None:
    source, cache = tmp_path / "not-a-model", tmp_path / "cache"
    source.mkdir()
    (source / "config.json").write_text("{}")

    with pytest.raises(ModelBuildError, match="builder failed"):
        quantized_model_dir(source, "int4", cache)

    assert list(cache.iterdir()) == []


async def test_the_engine_model_in_the_cache_is_reused(
    onnxruntime_generator: Generator, generator_model_dir: Path, settings: object
) -> None:
    from rag_grpc.settings import Settings

    assert isinstance(settings, Settings)
    cached = quantized_model_dir(
        generator_model_dir, "int4", settings.engines.model_cache_dir, builder=_must_not_build
    )

    assert (cached / "model.onnx").exists()
    assert onnxruntime_generator.info.backend == "onnxruntime-int4"

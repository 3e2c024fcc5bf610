"""The public configuration: every setting keeps its flat `RAG_GRPC_<NAME>` variable and `--<name>` flag,
whatever group it lives in. The sample values are built from the fields' annotations, so a new setting
is covered (or, with a type the builder does not know, fails here until it gets a sample)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from rag_grpc import cli
from rag_grpc.settings import GeneratorSpec, RateLimitRule, ServerSettings, Settings, setting_fields

# Settings whose values the annotation alone cannot choose: validated text, JSON, and the deprecated
# aliases, which must equal their targets (all four are set together here).
SAMPLES: dict[str, tuple[str, Any]] = {
    "log_level": ("warning", "warning"),
    "host": ("0.0.0.0", "0.0.0.0"),
    "metrics_host": ("0.0.0.0", "0.0.0.0"),
    "rate_limits": (
        '{"Generate": {"requests_per_s": 2, "request_burst": 4}}',
        {"Generate": RateLimitRule(requests_per_s=2, request_burst=4)},
    ),
    "max_concurrent_generations": ("8", 8),
    "generator_max_batch_size": ("8", 8),
    "max_queued_generations": ("9", 9),
    "generator_max_waiting_requests": ("9", 9),
    "generator_endpoints": (
        "grpc://127.0.0.1:7001, http://127.0.0.1:7002/v1",
        ("grpc://127.0.0.1:7001", "http://127.0.0.1:7002/v1"),
    ),
    "generators": (
        '[{"name": "small", "backend": "transformers"}, {"name": "big", "backend": "vllm", "default": true}]',
        (
            GeneratorSpec(name="small", backend="transformers"),
            GeneratorSpec(name="big", backend="vllm", default=True),
        ),
    ),
}


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        (kind,) = (arg for arg in get_args(annotation) if arg is not type(None))
        return kind
    return annotation


def _lower_bound(field: FieldInfo) -> float:
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Ge):
            return float(constraint.ge)  # type: ignore[arg-type]
        if isinstance(constraint, annotated_types.Gt):
            return float(constraint.gt)  # type: ignore[arg-type]
    return 0.0


def _sample(name: str, field: FieldInfo, tmp_path: Path) -> tuple[str, Any]:  # noqa: PLR0911 - one return per type
    """(text as the environment or a flag gives it, value read back), unlike the default where possible."""
    if name in SAMPLES:
        return SAMPLES[name]
    kind, default = _without_none(field.annotation), field.default
    if kind is bool:
        return ("false", False) if default else ("true", True)
    if get_origin(kind) is Literal:
        # A single-valued Literal (a backend with one engine so far) can only be set to its default.
        choice = next((c for c in get_args(kind) if c != default), default)
        return choice, choice
    if kind is int:
        value = int(default if default is not None else _lower_bound(field)) + 1
        return str(value), value
    if kind is float:
        number = default / 2 if default else _lower_bound(field) + 1.5
        return repr(number), number
    if kind is str:
        return f"{default or name}-sample", f"{default or name}-sample"
    if kind is Path:
        return str(tmp_path / name), tmp_path / name
    if kind is SecretStr:
        return f"secret-{name}", SecretStr(f"secret-{name}")
    raise AssertionError(f"no sample for {name} ({field.annotation}): add one to SAMPLES")


def _samples(tmp_path: Path) -> dict[str, tuple[str, Any]]:
    return {name: _sample(name, field, tmp_path) for _, name, field in setting_fields()}


def _read_back(settings: Settings) -> dict[str, Any]:
    return {name: getattr(getattr(settings, group), name) for group, name, _ in setting_fields()}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RAG_GRPC_* of the developer's, and a working directory without a .env."""
    import os

    for variable in [v for v in os.environ if v.upper().startswith("RAG_GRPC_")]:
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)


def test_samples_differ_from_the_defaults(tmp_path: Path) -> None:
    # Otherwise reading a sample back would not show that the variable or flag was used.
    for _, name, field in setting_fields():
        _, value = _sample(name, field, tmp_path)
        single_valued = get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1
        assert single_valued or value != field.get_default(call_default_factory=True), name


def test_every_setting_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    samples = _samples(tmp_path)
    for name, (text, _) in samples.items():
        monkeypatch.setenv(f"RAG_GRPC_{name.upper()}", text)
    read = _read_back(Settings(_env_file=None))  # type: ignore[call-arg]
    assert read == {name: value for name, (_, value) in samples.items()}


def test_every_setting_is_read_from_its_serve_flag(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    argv = ["serve"]
    for _, name, field in setting_fields():
        flag, (text, value) = name.replace("_", "-"), samples[name]
        if field.annotation is bool:
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", text]
    settings = cli.settings_from_args(cli.build_parser().parse_args(argv))
    assert _read_back(settings) == {name: value for name, (_, value) in samples.items()}


def test_names_are_case_insensitive_and_read_from_the_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("rag_grpc_cache_backend", "redis")
    (tmp_path / ".env").write_text("RAG_GRPC_PORT=7001\nrag_grpc_log_json=false\nRAG_GRPC_MAX_TOP_K=7\n")
    settings = Settings()
    assert settings.cache.cache_backend == "redis"
    assert (settings.server.port, settings.observability.log_json, settings.limits.max_top_k) == (
        7001,
        False,
        7,
    )


def test_keywords_win_over_the_environment_which_wins_over_env_file_and_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("RAG_GRPC_PORT=7001\nRAG_GRPC_HOST=10.0.0.1\n")
    monkeypatch.setenv("RAG_GRPC_PORT", "7002")
    assert Settings(port=7003).server.port == 7003
    from_sources = Settings()
    assert (from_sources.server.port, from_sources.server.host) == (7002, "10.0.0.1")
    assert from_sources.server.shutdown_grace_s == ServerSettings().shutdown_grace_s
    # A flag is a keyword: it wins over the environment.
    flags = cli.build_parser().parse_args(["serve", "--port", "7004"])
    assert cli.settings_from_args(flags).server.port == 7004
    # A group given whole is taken as it is; flat keywords refine it.
    assert Settings(server=ServerSettings(port=7005)).server.port == 7005
    refined = Settings(server=ServerSettings(port=7005), host="10.0.0.2").server
    assert (refined.port, refined.host) == (7005, "10.0.0.2")


def test_deprecated_generation_aliases_fold_into_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    folded = Settings(_env_file=None, generator_max_batch_size=4).limits  # type: ignore[call-arg]
    assert (folded.max_concurrent_generations, folded.max_queued_generations) == (4, 64)
    monkeypatch.setenv("RAG_GRPC_GENERATOR_MAX_WAITING_REQUESTS", "3")
    assert Settings(_env_file=None).limits.max_queued_generations == 3  # type: ignore[call-arg]
    same = Settings(_env_file=None, max_queued_generations=3).limits  # type: ignore[call-arg]
    assert same.max_queued_generations == 3


def test_deprecated_alias_and_its_target_set_differently_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=r"generator_max_batch_size \(deprecated\) and max_concurrent"):
        Settings(_env_file=None, generator_max_batch_size=4, max_concurrent_generations=8)  # type: ignore[call-arg]
    monkeypatch.setenv("RAG_GRPC_GENERATOR_MAX_WAITING_REQUESTS", "3")
    with pytest.raises(ValidationError, match="both set, to different values"):
        Settings(_env_file=None, max_queued_generations=5)  # type: ignore[call-arg]


def test_a_tls_certificate_needs_its_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAG_GRPC_TLS_CERT_FILE", str(tmp_path / "server.crt"))
    with pytest.raises(ValidationError, match="tls_cert_file and tls_key_file must be set together"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_env_file_none_ignores_a_developers_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RAG_GRPC_PORT=7001\nRAG_GRPC_GENERATOR_BACKEND=none\n")
    assert Settings().server.port == 7001  # the file is there and read by default
    isolated = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (isolated.server.port, isolated.engines.generator_backend) == (50051, "transformers")


def test_invalid_values_from_the_environment_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_GRPC_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError, match="log_level must be one of"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("RAG_GRPC_LOG_LEVEL", "info")
    monkeypatch.setenv("RAG_GRPC_PORT", "70000")
    with pytest.raises(ValidationError, match=r"server\.port"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_unknown_names_and_group_names_are_not_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    # The groups are internal: RAG_GRPC_SERVER is not a way in.
    monkeypatch.setenv("RAG_GRPC_SERVER", '{"port": 1}')
    monkeypatch.setenv("RAG_GRPC_NO_SUCH_SETTING", "1")
    assert Settings(_env_file=None, no_such_setting=1).server.port == 50051  # type: ignore[call-arg]


def test_with_overrides_validates_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Settings(_env_file=None, port=0, generator_max_batch_size=4)  # type: ignore[call-arg]
    monkeypatch.setenv("RAG_GRPC_HOST", "10.0.0.1")  # not read again
    copy = base.with_overrides(cache_backend="none", max_top_k=7)
    assert (copy.cache.cache_backend, copy.limits.max_top_k) == ("none", 7)
    assert (copy.server.port, copy.server.host, copy.limits.max_concurrent_generations) == (0, "127.0.0.1", 4)
    assert base.cache.cache_backend == "memory"
    with pytest.raises(ValidationError):
        base.with_overrides(max_top_k=0)
    with pytest.raises(ValueError, match="unknown settings: max_topk"):
        base.with_overrides(max_topk=7)


def test_the_serve_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for _, name, field in setting_fields():
        flag = name.replace("_", "-")
        assert f"--{flag}" in text
        if field.annotation is bool:
            assert f"--no-{flag}" in text


def test_generator_precision_resolves_per_backend_and_refuses_what_a_backend_cannot_run() -> None:
    assert Settings(_env_file=None).engines.resolved_generator_precision == "float32"  # type: ignore[call-arg]
    quantized = Settings(_env_file=None, generator_backend="onnxruntime")  # type: ignore[call-arg]
    assert quantized.engines.resolved_generator_precision == "int4"
    int8 = quantized.with_overrides(generator_precision="int8")
    assert int8.engines.resolved_generator_precision == "int8"
    with pytest.raises(ValidationError, match="generator_precision=int4 needs generator_backend=onnxruntime"):
        Settings(_env_file=None, generator_backend="transformers", generator_precision="int4")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="generator_precision=int8 needs generator_backend=onnxruntime"):
        Settings(_env_file=None, generator_backend="vllm", generator_precision="int8")  # type: ignore[call-arg]

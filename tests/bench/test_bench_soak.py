"""The soak's verdict: INTERNAL/UNKNOWN fail it, and so does UNAVAILABLE while the Generate callers fit
in the running slots; a short real soak against an in-process server passes and counts every call."""

from __future__ import annotations

from bench.load import LoadResult, Measurement
from bench.server import bench_settings, serving
from bench.soak import GENERATION_KINDS, OTHER_KINDS, SoakConfig, judge, run_soak


def _result(*measurements: tuple[str, str, int]) -> LoadResult:
    """A LoadResult of (kind, code, Generate callers in flight) measurements."""
    return LoadResult(
        concurrency=4,
        wall_s=1.0,
        measurements=tuple(Measurement(0.1, 1, None, code, kind, n) for kind, code, n in measurements),
        cancelled_in_flight=0,
    )


def test_expected_codes_pass_and_are_counted_per_kind() -> None:
    generation = _result(
        ("generate_short", "OK", 3),
        ("generate_deadline", "DEADLINE_EXCEEDED", 4),
        ("generate_cancelled", "CANCELLED", 4),
    )
    other = _result(("embed", "OK", 1), ("embed", "OK", 2))

    verdict = judge("soak", 16, 1.0, [generation], [other])

    assert verdict.passed
    assert verdict.calls == 5
    assert verdict.codes_by_kind["embed"] == {"OK": 2}
    assert verdict.codes == {"OK": 3, "DEADLINE_EXCEEDED": 1, "CANCELLED": 1}
    assert verdict.peak_generation_callers == 4
    assert verdict.deadline_before_first_token == 1  # no first token was timed
    assert verdict.line().startswith("PASS")


def test_internal_or_unknown_fails_wherever_it_comes_from() -> None:
    for code in ("INTERNAL", "UNKNOWN"):
        verdict = judge(
            "soak", 16, 1.0, [_result(("generate_short", "OK", 1))], [_result(("embed", code, 1))]
        )
        assert not verdict.passed
        assert verdict.failing == {code: 1}
        assert verdict.line().startswith(f"FAIL: {code} 1")


def test_unavailable_fails_only_while_the_generate_callers_fit_in_the_slots() -> None:
    generation = _result(
        ("grounded_deadline", "UNAVAILABLE", 16),  # 16 callers, capacity 16: nobody needs to queue
        ("grounded_deadline", "UNAVAILABLE", 3),
        ("grounded_deadline", "UNAVAILABLE", 17),  # more callers than slots: overload is possible
    )

    verdict = judge("storm", 16, 1.0, [generation])

    assert verdict.unavailable_within_capacity == 2
    assert verdict.codes == {"UNAVAILABLE": 3}
    assert not verdict.passed
    assert judge("storm", 16, 1.0, [_result(("long_stream", "UNAVAILABLE", 17))]).passed


async def test_a_short_soak_against_an_in_process_server_passes(redis_url: str) -> None:
    # No generator (Generate answers FAILED_PRECONDITION at once): fast, and still every path of the soak.
    settings = bench_settings(generator_backend="none", cache_backend="redis", cache_redis_url=redis_url)
    config = SoakConfig(duration_s=1.0, generation_callers=3, other_callers=5, max_requests=2_000)

    async with serving(settings, with_generator=False) as served:
        verdict = await run_soak(served.target, settings.limits.max_concurrent_generations, config)

    assert verdict.passed, verdict.summary()
    assert set(verdict.codes_by_kind) == {*GENERATION_KINDS, *OTHER_KINDS}
    for kind in OTHER_KINDS:
        assert verdict.codes_by_kind[kind] == {"OK": verdict.codes_by_kind[kind]["OK"]}
    assert set(verdict.codes_by_kind["generate_short"]) == {"FAILED_PRECONDITION"}
    assert set(verdict.codes_by_kind["generate_cancelled"]) == {"FAILED_PRECONDITION"}
    # 0.3 s includes embedding the query for retrieval, which a busy machine may not finish in time.
    assert set(verdict.codes_by_kind["generate_deadline"]) <= {"FAILED_PRECONDITION", "DEADLINE_EXCEEDED"}
    assert verdict.peak_generation_callers <= 3
    assert verdict.cancelled_in_flight == 0

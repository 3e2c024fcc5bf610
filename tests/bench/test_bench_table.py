"""The make-bench table from a recorded `bench.run --quick` results file: every row has every column,
Generate rows show tokens per stream, gRPC rows their non-OK codes, and a partial run still tabulates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.run import _markdown, _soak_details, _table

RECORDED = Path(__file__).parent / "data" / "quick_results.json"


def _results() -> dict[str, Any]:
    results: dict[str, Any] = json.loads(RECORDED.read_text())
    results.pop("machine")
    return results


def test_every_row_has_six_cells_and_the_codes_are_shown() -> None:
    results = _results()
    rows = _table(results)
    section = _markdown(rows, "test machine", True, _soak_details(results))

    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table[0] == "| benchmark | rag-grpc | baseline (same run) | ratio | non-OK | note |"
    assert all(line.count("|") == 7 for line in table)
    generate = [r for r in rows if r.benchmark.startswith("Generate via gRPC")]
    assert len(generate) == 2
    assert all("tok/stream" in r.ours and "tok/stream" in r.baseline for r in generate)
    storm = next(r for r in rows if r.benchmark.startswith("Deadline storm"))
    assert storm.ratio.startswith("FAIL") and "INTERNAL 6" in storm.non_ok  # recorded before the engine fix
    assert "- storm (" in section and "long_stream: INTERNAL 6" in section


def test_a_partial_run_tabulates_what_it_ran() -> None:
    results = {key: value for key, value in _results().items() if key in ("soak", "transport")}

    rows = _table(results)

    assert [r.benchmark.split(",")[0].split(":")[0] for r in rows] == [
        "Transport",
        "Transport",
        "Soak",
        "Deadline storm",
    ]


def test_quality_rows_show_every_configuration_and_the_router_targets() -> None:
    recorded = json.loads((Path(__file__).parent / "data" / "quality_results.json").read_text())
    rows = _table({"quality": recorded})
    labels = [r.benchmark for r in rows]
    assert sum(label.startswith("Quality set") for label in labels) == len(recorded["configs"])
    assert sum(label.startswith("Router, threshold") for label in labels) == 3
    default = next(r for r in rows if r.benchmark.endswith("transformers float32 (default)"))
    assert "targets >= 85 % / >= 80 %" in default.ratio
    half = next(r for r in rows if "calibrated to 50% big calls" in r.benchmark)
    assert "met" in half.ratio and "APGR" in half.note
    assert any(label.startswith("Router, model=auto") for label in labels)

"""deploy/observability/: the Prometheus rules pass promtool (syntax, and unit tests that each alert fires
when it should), and every query of the Grafana dashboard and the rules names metrics that a real server
exports: each name must have samples in a live scrape of a server that served every kind of call."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import ALICE_KEY, API_KEYS, serving
from tests.conftest import free_loopback_port
from tests.helpers import bearer, collect, expect_status

OBSERVABILITY = Path(__file__).resolve().parents[1] / "deploy" / "observability"
RULES = OBSERVABILITY / "prometheus"
RULE_FILES = sorted(RULES.glob("*.rules.yml"))
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "rag-grpc.json"

# The PromQL functions, operators and keywords the queries use; any other word is a metric or a rule.
PROMQL_WORDS = frozenset(
    {"rate", "sum", "min", "max", "histogram_quantile", "min_over_time", "and", "or", "label_values"}
)


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (make test installs it: apt-get install -y prometheus)")
    return binary


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    assert len(RULE_FILES) == 2
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_the_series_it_is_for(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", "rules.test.yml"], cwd=RULES, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        test["alertname"]
        for group in _yaml(RULES / "rules.test.yml")["tests"]
        for test in group["alert_rule_test"]
    }
    assert tested == set(_rules(kind="alert"))


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules(kind: str) -> dict[str, str]:
    """Name -> expression of every recording rule (kind "record") or alert (kind "alert")."""
    return {
        rule[kind]: rule["expr"]
        for path in RULE_FILES
        for group in _yaml(path)["groups"]
        for rule in group["rules"]
        if kind in rule
    }


def metric_names(expr: str) -> set[str]:
    """The metric and recording-rule names a PromQL expression reads."""
    expr = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"\1", expr)  # Grafana's: (query, label name)
    for pattern in (
        r'"[^"]*"',  # strings (label values, legend formats)
        r"\{[^}]*\}",  # label matchers
        r"\[[^\]]*\]",  # range selectors
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",  # label lists
    ):
        expr = re.sub(pattern, " ", expr)
    return {word for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if word not in PROMQL_WORDS}


def test_metric_names_are_read_from_promql() -> None:
    expr = 'histogram_quantile(0.99, sum by (grpc_method, le) (rate(x_bucket{job=~"$job", le!="1"}[$__rate_interval]))) / ignoring(a) y:z:rate5m > 0.5'
    assert metric_names(expr) == {"x_bucket", "y:z:rate5m"}
    assert metric_names('label_values(x_total{job=~"$job"}, instance)') == {"x_total"}


def _dashboard_queries() -> dict[str, list[str]]:
    """Panel title -> its queries; the template variables' queries as one more entry."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {
        panel["title"]: [target["expr"] for target in panel.get("targets", [])]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    queries["(variables)"] = variables
    return queries


def test_every_panel_has_queries_that_name_metrics() -> None:
    for title, exprs in _dashboard_queries().items():
        assert exprs, title
        for expr in exprs:
            assert metric_names(expr), (title, expr)


def _exported(scrape: str) -> set[str]:
    """Names that have at least one sample in a Prometheus text exposition."""
    return {
        line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line and not line.startswith("#")
    }


def _resolve(name: str, recorded: dict[str, str], seen: tuple[str, ...] = ()) -> set[str]:
    """The raw metrics `name` reads, through recording rules."""
    if name not in recorded:
        return {name}
    assert name not in seen, f"recording rules loop: {seen}"
    return {raw for inner in metric_names(recorded[name]) for raw in _resolve(inner, recorded, (*seen, name))}


async def _scrape(port: int) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(fetch)


async def test_every_query_names_metrics_a_live_server_exports(
    engines: Engines, settings: Settings, isolated_tag: str
) -> None:
    port = free_loopback_port()
    one_info_call = json.dumps({"Info": {"requests_per_s": 0.001, "request_burst": 1}})
    key = bearer(ALICE_KEY)
    async with serving(
        engines, settings, full_service=True, metrics_port=port, api_keys=API_KEYS, rate_limits=one_info_call
    ) as server:
        # Every kind of call the dashboard shows: writes, embeddings, retrieval, a grounded and cached
        # generation, and refusals by authentication and by a rate limit.
        stubs = server.stubs
        documents = [
            pb.Document(
                id=f"{isolated_tag}-1", text="Basalt forms from lava.", metadata={"test": isolated_tag}
            )
        ]
        await stubs.documents.Upsert(pb.UpsertRequest(documents=documents), metadata=key)
        await stubs.embed.Embed(pb.EmbedRequest(texts=["lava"]), metadata=key)
        await stubs.retrieve.Retrieve(pb.RetrieveRequest(text="lava", top_k=1), metadata=key)
        request = pb.GenerateRequest(
            prompt="What forms from lava?",
            sampling=pb.SamplingParams(max_tokens=4, temperature=0),
            retrieval=pb.RetrievalOptions(top_k=1, filter={"test": isolated_tag}),
        )
        for _ in range(2):  # the second is a cache hit
            await collect(stubs.generate.Generate(request, metadata=key))
        await expect_status(stubs.info.Info(pb.InfoRequest()), grpc.StatusCode.UNAUTHENTICATED)
        await stubs.info.Info(pb.InfoRequest(), metadata=key)
        await expect_status(
            stubs.info.Info(pb.InfoRequest(), metadata=key), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        exported = _exported(await _scrape(port))

    recorded = _rules(kind="record")
    uses: dict[str, set[str]] = {
        f"panel {title!r}": {name for expr in exprs for name in metric_names(expr)}
        for title, exprs in _dashboard_queries().items()
    }
    uses |= {f"alert {name}": metric_names(expr) for name, expr in _rules(kind="alert").items()}
    uses |= {f"recording rule {name}": metric_names(expr) for name, expr in recorded.items()}
    for user, names in uses.items():
        raw = {metric for name in names for metric in _resolve(name, recorded)}
        missing = sorted(raw - exported)
        assert not missing, f"{user} reads {missing}, which the server does not export"

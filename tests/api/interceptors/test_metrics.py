"""Scrapes the /metrics endpoint after unary, streamed, cancelled and failed calls (and the coroutine-
style health Watch and the client-streaming Ingest) and checks counters and histograms."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from tests.api.interceptors.conftest import RunningServer, serving
from tests.conftest import free_loopback_port
from tests.helpers import collect, doc, expect_status

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: RunningServer) -> Samples:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    text = await asyncio.to_thread(fetch)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grpc_labels(kind: str, service: str, method: str) -> dict[str, str]:
    return {
        "grpc_type": kind,
        "grpc_service": f"rag_grpc.v1.{service}" if "." not in service else service,
        "grpc_method": method,
    }


async def test_metrics_endpoint_counts_every_kind_of_call(
    engines: Engines, settings: Settings, isolated_tag: str
) -> None:
    async with serving(
        engines, settings, full_service=True, cache_backend="memory", metrics_port=free_loopback_port()
    ) as s:
        stubs = s.stubs
        # unary, OK
        await stubs.info.Info(pb.InfoRequest())
        # unary, failed
        await expect_status(stubs.embed.Embed(pb.EmbedRequest(texts=[])), grpc.StatusCode.INVALID_ARGUMENT)
        three = [f"{word} {isolated_tag}" for word in ("one", "two", "three")]
        await stubs.embed.Embed(pb.EmbedRequest(texts=three))
        # Two of these come from the embedding cache.
        await stubs.embed.Embed(pb.EmbedRequest(texts=[three[0], three[1], f"four {isolated_tag}"]))
        # server streaming to the end
        streamed = await collect(
            stubs.generate.Generate(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_tokens=6)))
        )
        # server streaming, aborted by the server before any message (bad input)
        await expect_status(
            collect(
                stubs.generate.Generate(
                    pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_tokens=0))
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        # server streaming, past its deadline
        late = stubs.generate.Generate(
            pb.GenerateRequest(prompt="Tell a long story.", sampling=pb.SamplingParams(max_tokens=300)),
            timeout=0.5,
        )
        await expect_status(collect(late), grpc.StatusCode.DEADLINE_EXCEEDED)
        # server streaming, cancelled by the client after the first message
        cancelled = stubs.generate.Generate(
            pb.GenerateRequest(prompt="Tell a long story.", sampling=pb.SamplingParams(max_tokens=300))
        )
        await cancelled.read()
        cancelled.cancel()
        # streaming written with context.write (health Watch), cancelled after the first message
        watch = stubs.health.Watch(health_pb2.HealthCheckRequest(service=""))
        await watch.read()
        watch.cancel()

        # client streaming, two messages
        async def batches() -> AsyncIterator[pb.IngestRequest]:
            for i in range(2):
                yield pb.IngestRequest(
                    documents=[doc(f"metrics-{isolated_tag}-{i}", f"text {i}", test=isolated_tag)]
                )

        await stubs.documents.Ingest(batches())
        await stubs.retrieve.Retrieve(pb.RetrieveRequest(text="text", top_k=2, filter={"test": isolated_tag}))

        generate = grpc_labels("server_stream", "GenerateService", "Generate")
        watch_labels = grpc_labels("server_stream", "grpc.health.v1.Health", "Watch")
        # Cancellations and deadlines reach the server asynchronously: wait until all are recorded.
        async with asyncio.timeout(30):
            while True:
                samples = await scrape(s)
                ended_generations = value(
                    samples, "grpc_server_handled_total", **generate, grpc_code="CANCELLED"
                ) + value(samples, "grpc_server_handled_total", **generate, grpc_code="DEADLINE_EXCEEDED")
                if ended_generations == 2 and value(
                    samples, "grpc_server_handled_total", **watch_labels, grpc_code="CANCELLED"
                ):
                    break
                await asyncio.sleep(0.05)

    info = grpc_labels("unary", "InfoService", "Info")
    assert value(samples, "grpc_server_started_total", **info) == 1
    assert value(samples, "grpc_server_handled_total", **info, grpc_code="OK") == 1
    assert value(samples, "grpc_server_msg_received_total", **info) == 1
    assert value(samples, "grpc_server_msg_sent_total", **info) == 1
    assert value(samples, "grpc_server_handling_seconds_count", **info) == 1
    assert value(samples, "grpc_server_handling_seconds_bucket", **info, le="+Inf") == 1
    assert 0 < value(samples, "grpc_server_handling_seconds_sum", **info) < 10

    embed = grpc_labels("unary", "EmbedService", "Embed")
    assert value(samples, "grpc_server_started_total", **embed) == 3
    assert value(samples, "grpc_server_handled_total", **embed, grpc_code="INVALID_ARGUMENT") == 1
    assert value(samples, "grpc_server_handled_total", **embed, grpc_code="OK") == 2
    assert value(samples, "grpc_server_msg_sent_total", **embed) == 2  # the failed call sent nothing

    assert value(samples, "grpc_server_started_total", **generate) == 4
    assert value(samples, "grpc_server_handled_total", **generate, grpc_code="OK") == 1
    assert value(samples, "grpc_server_handled_total", **generate, grpc_code="INVALID_ARGUMENT") == 1
    # The call past its deadline is DEADLINE_EXCEEDED when the server's copy of the deadline fires first,
    # CANCELLED when the client's own (a moment earlier) cancels it first; the cancelled call is CANCELLED.
    assert value(samples, "grpc_server_handled_total", **generate, grpc_code="CANCELLED") in (1, 2)
    assert value(samples, "grpc_server_handling_seconds_count", **generate) == 4
    # Every message of the complete stream, and at least the one the cancelled call read.
    assert value(samples, "grpc_server_msg_sent_total", **generate) >= len(streamed) + 1

    assert value(samples, "grpc_server_msg_sent_total", **watch_labels) >= 1
    assert value(samples, "grpc_server_handling_seconds_count", **watch_labels) == 1

    ingest = grpc_labels("client_stream", "DocumentService", "Ingest")
    assert value(samples, "grpc_server_msg_received_total", **ingest) == 2
    assert value(samples, "grpc_server_msg_sent_total", **ingest) == 1
    assert value(samples, "grpc_server_handled_total", **ingest, grpc_code="OK") == 1

    # Domain metrics, recorded by the service.
    model = {"model": "SmolLM2-135M-Instruct"}
    # The call past its deadline may or may not have had its first token.
    assert value(samples, "rag_generate_time_to_first_token_seconds_count", **model) >= 2
    assert value(samples, "rag_generate_inter_token_latency_seconds_count", **model) >= 1
    finished = {
        r: value(samples, "rag_generate_finished_total", **model, finish_reason=r)
        for r in ("stop", "length", "abort")
    }
    assert finished["stop"] + finished["length"] == 1 and finished["abort"] == 2
    usage = streamed[-1].final.usage
    assert value(samples, "rag_generate_prompt_tokens_total", **model) == usage.prompt_tokens
    assert value(samples, "rag_generate_generation_tokens_total", **model) >= usage.completion_tokens + 1
    # Model batches, as the micro-batcher formed them: 3 + 1 texts of the two Embeds (calls one after
    # the other run alone), 1 + 1 of the Ingest batches, 1 for the Retrieve query.
    assert value(samples, "rag_embed_batch_size_count") == 5
    assert value(samples, "rag_embed_batch_size_sum") == 3 + 1 + 1 + 1 + 1
    assert value(samples, "rag_search_batch_size_count") == 1
    assert value(samples, "rag_embed_tokens_total") > 0
    assert value(samples, "rag_cache_hits_total", cache="embedding") == 2
    assert value(samples, "rag_cache_misses_total", cache="embedding") == 3 + 1 + 1  # the Retrieve query too
    assert value(samples, "rag_cache_misses_total", cache="retrieval") == 1
    assert value(samples, "rag_retrieve_duration_seconds_count") == 1
    assert value(samples, "rag_retrieve_results_sum") == 2
    assert value(samples, "rag_index_vectors") >= 2


async def test_metrics_endpoint_is_off_by_default(engines: Engines, settings: Settings) -> None:
    async with serving(engines, settings) as s:
        assert s.server.metrics_port == 0

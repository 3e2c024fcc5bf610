"""Two rag-grpc replicas (separate processes) sharing one redis-server (caches, rate limits, index
version) and one Milvus (a milvus-lite server), reached through both fronts that deploy/ documents:
nginx with deploy/nginx/rag-grpc.conf, and client-side round_robin with health checking.

Replica B ends the module drained (SIGTERM), so the drain test runs last."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest

from bench.nginx_front import NginxFront
from rag_grpc.v1 import rag_pb2 as pb
from tests.conftest import Stubs, free_loopback_port
from tests.storage.server_process import ServerProcess

pytestmark = pytest.mark.slow

INFO_BURST = 6
# The gRPC way to balance over addresses: round_robin, skipping replicas whose health is not SERVING,
# and retrying UNAVAILABLE (what a draining replica answers) on another one.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            "name": [{"service": "rag_grpc.v1.EmbedService"}, {"service": "rag_grpc.v1.RetrieveService"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


# Through nginx the client sees one address: no health checking of it (its health would be whichever
# replica answers the check), only the retry of UNAVAILABLE.
PROXY_SERVICE_CONFIG = {"methodConfig": SERVICE_CONFIG["methodConfig"]}


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    address_a: str
    address_b: str
    front: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str, milvus_uri: str) -> Iterator[Cluster]:
    collection = f"scale_{uuid.uuid4().hex}"
    options = [
        "--vector-store-backend", "milvus", "--milvus-uri", milvus_uri, "--milvus-collection", collection,
        "--index-version-redis-url", redis_url,
        "--cache-backend", "redis", "--cache-redis-url", redis_url, "--cache-namespace", collection,
        "--rate-limit-backend", "redis", "--rate-limit-redis-url", redis_url,
        "--rate-limit-key-prefix", f"{collection}:rl:",
        # Info alone is limited: its joint budget is INFO_BURST calls, whichever replica takes them.
        "--rate-limits", json.dumps({"Info": {"requests_per_s": 0.01, "request_burst": INFO_BURST}}),
        "--shutdown-grace-s", "5", "--health-check-interval-s", "0.2",
    ]  # fmt: skip
    a = ServerProcess(tmp_path_factory.mktemp("replica-a"), *options, durable=False)
    b = ServerProcess(tmp_path_factory.mktemp("replica-b"), *options, durable=False)
    try:
        # Started one after the other: the first creates the collection.
        address_a = a.start()
        address_b = b.start()
        front_dir = tmp_path_factory.mktemp("nginx")
        with NginxFront(front_dir, [address_a, address_b], free_loopback_port()) as front:
            yield Cluster(a, b, address_a, address_b, front.address)
    finally:
        a.kill()
        b.kill()


@pytest.fixture
async def stubs_of(cluster: Cluster) -> AsyncIterator[dict[str, Stubs]]:
    """Stubs to replica A, replica B, the nginx front and the client-side balanced channel."""
    balanced = f"ipv4:{cluster.address_a},{cluster.address_b}"
    channels = {
        "a": grpc.aio.insecure_channel(cluster.address_a),
        "b": grpc.aio.insecure_channel(cluster.address_b),
        "nginx": grpc.aio.insecure_channel(
            cluster.front, options=[("grpc.service_config", json.dumps(PROXY_SERVICE_CONFIG))]
        ),
        "round_robin": grpc.aio.insecure_channel(
            balanced, options=[("grpc.service_config", json.dumps(SERVICE_CONFIG))]
        ),
    }
    yield {name: Stubs(channel) for name, channel in channels.items()}
    for channel in channels.values():
        await channel.close()


def _retrieve(tag: str) -> pb.RetrieveRequest:
    return pb.RetrieveRequest(text="the shared lighthouse keeper", top_k=5, filter={"test": tag})


async def test_a_write_through_one_replica_is_read_through_the_other(stubs_of: dict[str, Stubs]) -> None:
    a, b = stubs_of["a"], stubs_of["b"]
    tag = uuid.uuid4().hex
    # Both replicas cache the empty answer first.
    for stubs in (a, b, b):
        assert list((await stubs.retrieve.Retrieve(_retrieve(tag))).hits) == []
    assert (await b.retrieve.Retrieve(_retrieve(tag))).cached

    document = pb.Document(
        id=f"doc-{tag}", text="The lighthouse keeper shares the light.", metadata={"test": tag}
    )
    written = await a.documents.Upsert(pb.UpsertRequest(documents=[document]))
    seen = await b.retrieve.Retrieve(_retrieve(tag))
    assert [h.id for h in seen.hits] == [document.id] and not seen.cached
    assert seen.index_version >= written.index_version
    assert (await b.retrieve.Retrieve(_retrieve(tag))).cached  # cached again, at the new version

    deleted = await b.documents.Delete(pb.DeleteRequest(ids=[document.id]))
    after = await a.retrieve.Retrieve(_retrieve(tag))
    assert list(after.hits) == [] and after.index_version >= deleted.index_version


async def test_the_rate_limit_is_joint_across_replicas(stubs_of: dict[str, Stubs]) -> None:
    codes: Counter[str] = Counter()
    for i in range(2 * INFO_BURST):
        stubs = stubs_of["a" if i % 2 else "b"]
        try:
            await stubs.info.Info(pb.InfoRequest())
            codes["OK"] += 1
        except grpc.aio.AioRpcError as err:
            codes[err.code().name] += 1
    assert codes == {"OK": INFO_BURST, "RESOURCE_EXHAUSTED": INFO_BURST}


def _served(replica: ServerProcess, method: str) -> int:
    return sum(
        1 for e in replica.events_since_start() if e.get("event") == "rpc" and e.get("method") == method
    )


@pytest.mark.parametrize("front", ["nginx", "round_robin"])
async def test_calls_spread_evenly_over_healthy_replicas(
    cluster: Cluster, stubs_of: dict[str, Stubs], front: str
) -> None:
    method = "/rag_grpc.v1.EmbedService/Embed"
    await asyncio.sleep(0.3)  # the request log of earlier calls is written
    before = _served(cluster.a, method), _served(cluster.b, method)
    calls = 100
    for _ in range(calls // 10):
        await asyncio.gather(
            *(stubs_of[front].embed.Embed(pb.EmbedRequest(texts=["spread"])) for _ in range(10))
        )
    await asyncio.sleep(0.3)
    share_a = _served(cluster.a, method) - before[0]
    share_b = _served(cluster.b, method) - before[1]
    assert share_a + share_b == calls
    assert abs(share_a - share_b) <= 0.2 * calls, (share_a, share_b)


async def test_draining_a_replica_fails_no_call_through_either_front(
    cluster: Cluster, stubs_of: dict[str, Stubs]
) -> None:
    failures: list[str] = []
    done = asyncio.Event()
    counts: Counter[str] = Counter()

    async def caller(front: str) -> None:
        while not done.is_set():
            try:
                await stubs_of[front].embed.Embed(pb.EmbedRequest(texts=["drain"]), timeout=10)
                counts[front] += 1
            except grpc.aio.AioRpcError as err:
                failures.append(f"{front}: {err.code().name} {err.details()}")

    # Eight through nginx: with grpc's own shutdown, that many lost one or two calls in every drain.
    callers = [
        asyncio.create_task(caller(front))
        for front, count in (("nginx", 8), ("round_robin", 4))
        for _ in range(count)
    ]
    await asyncio.sleep(1.0)
    before = dict(counts)
    cluster.b.send_signal(15)  # SIGTERM: NOT_SERVING, in-flight calls finish, then it exits
    assert await asyncio.to_thread(cluster.b.wait, 30) == 0
    await asyncio.sleep(1.5)  # calls keep flowing, all to A
    done.set()
    await asyncio.gather(*callers)
    # No failed call through either front: the draining replica never answers CANCELLED (it ends without
    # grpc's shutdown), and nginx turns a call lost with the replica's connection into UNAVAILABLE.
    assert not failures, sorted(Counter(failures).items())
    assert all(counts[front] > before.get(front, 0) for front in ("nginx", "round_robin"))

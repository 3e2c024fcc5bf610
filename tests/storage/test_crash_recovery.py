"""The server process is killed with SIGKILL while upserts stream in, over and over. After every
restart each acknowledged document is present and searchable, and each unacknowledged upsert is
either wholly present or wholly absent: no partial batch, no altered document.

RAG_GRPC_CRASH_ROUNDS sets the number of kills (default 20) and RAG_GRPC_CRASH_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from rag_grpc.storage.snapshot import list_snapshots
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.storage.server_process import ServerProcess

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("RAG_GRPC_CRASH_ROUNDS", "20"))
WRITERS = 3
WORDS = [
    "amber", "basalt", "cobalt", "dune", "ember", "fjord", "glacier", "harbor",
    "iris", "jade", "kelp", "lagoon", "mesa", "nectar", "onyx", "reef",
]  # fmt: skip
# Any unit vector: a filtered search returns every match whatever the query (no min_score).
PROBE = pb.Vector(values=(np.ones(384, dtype=np.float32) / np.sqrt(384)).tolist())


@dataclass
class Ledger:
    """What the client sent, and which upserts the server acknowledged (with their versions)."""

    sent: dict[str, list[pb.Document]] = field(default_factory=dict)
    acknowledged: dict[str, int] = field(default_factory=dict)


def _batch(rng: random.Random, batch_id: str) -> list[pb.Document]:
    return [
        pb.Document(
            id=f"{batch_id}-d{n}",
            text=f"{batch_id} document {n}: " + " ".join(rng.choices(WORDS, k=12)),
            metadata={"batch": batch_id, "n": str(n), "note": "ünïcødé ✓"},
        )
        for n in range(rng.randint(1, 4))
    ]


async def _write_until_killed(
    stub: pb_grpc.DocumentServiceStub,
    ledger: Ledger,
    prefix: str,
    rng: random.Random,
    first_ack: asyncio.Event,
) -> None:
    for n in range(100_000):
        batch_id = f"{prefix}-b{n}"
        ledger.sent[batch_id] = documents = _batch(rng, batch_id)
        try:
            response = await stub.Upsert(pb.UpsertRequest(documents=documents), timeout=60)
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err
            return
        ledger.acknowledged[batch_id] = response.index_version
        first_ack.set()


async def _verify(channel: grpc.aio.Channel, ledger: Ledger, rng: random.Random) -> None:
    retrieve = pb_grpc.RetrieveServiceStub(channel)
    info = (await pb_grpc.InfoServiceStub(channel).Info(pb.InfoRequest())).index
    limit = asyncio.Semaphore(16)

    async def stored(batch_id: str) -> list[pb.Hit]:
        async with limit:
            request = pb.RetrieveRequest(vector=PROBE, top_k=10, filter={"batch": batch_id})
            return list((await retrieve.Retrieve(request)).hits)

    batch_ids = list(ledger.sent)
    found = await asyncio.gather(*(stored(b) for b in batch_ids))
    present = 0
    for batch_id, hits in zip(batch_ids, found, strict=True):
        sent = {d.id: d for d in ledger.sent[batch_id]}
        if batch_id in ledger.acknowledged or hits:
            assert sorted(h.id for h in hits) == sorted(sent), (
                f"batch {batch_id} is partial: {[h.id for h in hits]}"
            )
            for hit in hits:
                assert (hit.text, dict(hit.metadata)) == (sent[hit.id].text, dict(sent[hit.id].metadata))
            present += 1
    # Nothing else is in the index, and each stored upsert is one version: no write lost, none twice.
    assert info.size == sum(len(ledger.sent[b]) for b, hits in zip(batch_ids, found, strict=True) if hits)
    assert info.version == present
    assert info.version >= max(ledger.acknowledged.values(), default=0)
    # Searchable by meaning, not only by filter: a document's own text finds it first.
    for batch_id in rng.sample(sorted(ledger.acknowledged), min(5, len(ledger.acknowledged))):
        document = ledger.sent[batch_id][0]
        hits = (await retrieve.Retrieve(pb.RetrieveRequest(text=document.text, top_k=1))).hits
        assert [h.id for h in hits] == [document.id]


async def test_acknowledged_upserts_survive_sigkill_at_random_points(tmp_path: Path) -> None:
    seed = int(os.environ.get("RAG_GRPC_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash test seed {seed} (RAG_GRPC_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)
    # Frequent snapshots, so kills also land in snapshot writing, log rotation and segment removal.
    server = ServerProcess(tmp_path, "--snapshot-interval-s", "0.2")
    ledger = Ledger()
    for round_number in range(ROUNDS + 1):
        target = server.start()
        events = [e["event"] for e in server.events_since_start()]
        assert events.count("wal_tail_discarded") <= 1
        async with grpc.aio.insecure_channel(target) as channel:
            await _verify(channel, ledger, rng)
            if round_number == ROUNDS:
                break
            stub = pb_grpc.DocumentServiceStub(channel)
            first_ack = asyncio.Event()
            writers = [
                asyncio.create_task(_write_until_killed(stub, ledger, f"r{round_number}w{w}", rng, first_ack))
                for w in range(WRITERS)
            ]
            await asyncio.wait_for(first_ack.wait(), timeout=60)
            await asyncio.sleep(rng.uniform(0.0, 0.8))
            server.kill()
            await asyncio.gather(*writers)
    # A clean stop writes a final snapshot that holds everything.
    async with grpc.aio.insecure_channel(target) as channel:
        version = (await pb_grpc.InfoServiceStub(channel).Info(pb.InfoRequest())).index.version
    assert server.stop() == 0
    assert [v for v, _ in list_snapshots(server.data_dir)][-1] == version
    print(f"{ROUNDS} kills, {len(ledger.sent)} upserts sent, {len(ledger.acknowledged)} acknowledged")

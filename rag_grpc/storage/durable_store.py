"""DurableVectorStore: any PersistableVectorStore, made to survive restarts and crashes.

Every write is logged before it is applied: under one write lock, the record (carrying the version
the write will produce) is appended and fsynced on the log's worker thread, then applied to the
inner store, then acknowledged. The lock gives the log and the index one order, so the version in
the log is the index's version. The log-then-apply step is shielded from cancellation: a caller
that goes away cannot leave a logged write unapplied (which would hand its version out twice).

Snapshots copy the inner store's state at version V under the same lock, rotate the log to a new
segment at V+1, write the snapshot file on their own thread, and then drop the segments it covers.
They run every `snapshot_interval_s`, when the log has grown by `snapshot_wal_max_bytes`, on
`snapshot()` (the admin RPC), and when the store is closed.

If the log cannot be written, or the inner store fails to apply a logged write, the log and the
index may disagree: the store then refuses every later write with UNAVAILABLE until a restart
replays the log, while reads keep working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import structlog

from rag_grpc.domain import (
    Document,
    EngineInfo,
    FloatMatrix,
    SearchQuery,
    SearchResult,
    SnapshotInfo,
    StoreState,
)
from rag_grpc.engines.base import PersistableVectorStore
from rag_grpc.errors import EngineError, InvalidArgument, NotFound, RagError, Unavailable
from rag_grpc.storage.files import DirectoryLock, StorageCorrupted, remove_stale_temporaries
from rag_grpc.storage.snapshot import list_snapshots, read_snapshot, remove_snapshots_before, write_snapshot
from rag_grpc.storage.wal import (
    DeleteRecord,
    UpsertRecord,
    WalRecord,
    WriteAheadLog,
    list_segments,
    read_segment,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

_FAILED = "storage: the write-ahead log could not be written; writes are refused until the server restarts"


class DurableVectorStore:
    def __init__(
        self,
        inner: PersistableVectorStore,
        data_dir: Path,
        snapshot_interval_s: float = 300.0,
        snapshot_wal_max_bytes: int = 0,
    ) -> None:
        self._inner = inner
        self._dir = data_dir
        self._snapshot_interval_s = snapshot_interval_s
        self._snapshot_wal_max_bytes = snapshot_wal_max_bytes
        self._log = WriteAheadLog(data_dir)
        self._lock_file = DirectoryLock(data_dir)
        # fsync and snapshot files never run on the event loop; each has one thread so its order is kept.
        self._log_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self._snapshot_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self._write_lock = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_wanted = asyncio.Event()
        self._snapshot_version = -1
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._periodic: asyncio.Task[None] | None = None
        self._failed = False
        self._closing = False

    # --- lifecycle

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._lock_file.acquire()
            await self._recover()
        except BaseException:
            self._log.close()
            self._log_thread.shutdown(wait=False)
            self._snapshot_thread.shutdown(wait=False)
            self._lock_file.release()
            await self._inner.__aexit__(None, None, None)
            raise
        if self._snapshot_interval_s > 0 or self._snapshot_wal_max_bytes > 0:
            self._periodic = asyncio.create_task(self._snapshot_periodically(), name="periodic-snapshot")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        if self._periodic is not None:
            self._periodic.cancel()
            await asyncio.gather(self._periodic, return_exceptions=True)
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        try:
            if not self._failed:
                await self.snapshot()
        except Exception:
            log.exception("final_snapshot_failed")
        finally:
            await self._on(self._log_thread, self._log.close)
            self._log_thread.shutdown(wait=True)
            self._snapshot_thread.shutdown(wait=True)
            self._lock_file.release()
            await self._inner.__aexit__(*exc_info)

    async def check_health(self) -> None:
        if self._failed:
            raise Unavailable(f"the write-ahead log in {self._dir} failed; writes are refused")
        await self._inner.check_health()

    async def _recover(self) -> None:
        """Newest snapshot, then every logged write after it, then the log is reopened for appending."""
        started = time.perf_counter()
        await self._on(self._snapshot_thread, remove_stale_temporaries, self._dir)
        snapshot_version = await self._load_newest_snapshot()
        replayed = await self._replay_log()
        await self._on(self._log_thread, self._log.open, self._inner.version + 1)
        log.info(
            "storage_recovered",
            data_dir=str(self._dir),
            snapshot_version=snapshot_version,
            replayed_records=replayed,
            index_version=self._inner.version,
            documents=self._inner.size,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    async def _load_newest_snapshot(self) -> int | None:
        snapshots = list_snapshots(self._dir)
        if not snapshots:
            return None
        path = snapshots[-1][1]
        state = await self._on(self._snapshot_thread, read_snapshot, path)
        if state.vectors.shape[1] != self._inner.dimension:
            raise StorageCorrupted(
                f"{path} holds {state.vectors.shape[1]}-dimensional vectors; the embedder makes "
                f"{self._inner.dimension} (use another data_dir for another embedder)"
            )
        await self._inner.restore_state(state)
        self._snapshot_version = state.version
        return state.version

    async def _replay_log(self) -> int:
        replayed = 0
        segments = list_segments(self._dir)
        for number, (_, path) in enumerate(segments):
            records = await self._on(self._log_thread, read_segment, path, number == len(segments) - 1)
            for record in records:
                if record.version <= self._inner.version:
                    continue  # the snapshot holds it already
                if record.version != self._inner.version + 1:
                    raise StorageCorrupted(
                        f"{path}: record for version {record.version} follows version {self._inner.version}"
                    )
                try:
                    applied = await self._apply(record)
                except RagError as exc:
                    raise StorageCorrupted(
                        f"{path}: replaying version {record.version} failed: {exc.message}"
                    ) from exc
                if applied != record.version:
                    raise StorageCorrupted(
                        f"{path}: replaying version {record.version} produced version {applied}"
                    )
                replayed += 1
        return replayed

    # --- VectorStore: reads go straight to the inner store

    @property
    def info(self) -> EngineInfo:
        return self._inner.info

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def version(self) -> int:
        return self._inner.version

    async def current_version(self) -> int:
        return self._inner.version

    async def search(self, queries: Sequence[SearchQuery]) -> list[SearchResult]:
        return await self._inner.search(queries)

    async def get(self, ids: Sequence[str]) -> Mapping[str, Document]:
        return await self._inner.get(ids)

    async def export_state(self) -> StoreState:
        return await self._inner.export_state()

    # --- writes: log, then apply, then acknowledge

    async def upsert(self, documents: Sequence[Document], vectors: FloatMatrix) -> int:
        documents = list(documents)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(documents), self.dimension):
            raise InvalidArgument(
                "vectors", f"expected shape ({len(documents)}, {self.dimension}), got {vectors.shape}"
            )
        return await self._write(lambda version: UpsertRecord(version, documents, vectors))

    async def delete(self, ids: Sequence[str]) -> int:
        ids = list(ids)

        async def all_known() -> None:
            found = await self._inner.get(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound.unknown_ids(missing)  # nothing logged, nothing changed

        return await self._write(lambda version: DeleteRecord(version, ids), check=all_known)

    async def _write(
        self, make_record: Callable[[int], WalRecord], check: Callable[[], Awaitable[None]] | None = None
    ) -> int:
        if self._failed:
            raise Unavailable(_FAILED)
        if self._closing:
            raise Unavailable("storage: the index is shutting down")
        await (
            self._write_lock.acquire()
        )  # waiting here is cancellable; from here on the lock belongs to the task
        return await self._shielded(self._log_then_apply(make_record, check))

    async def _shielded(self, work: Awaitable[T]) -> T:
        """Runs `work` to the end even if the caller is cancelled, and is awaited by __aexit__."""
        task = asyncio.ensure_future(work)
        self._in_flight.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: a caller that went away must not leave it "never retrieved"

    async def _log_then_apply(
        self, make_record: Callable[[int], WalRecord], check: Callable[[], Awaitable[None]] | None
    ) -> int:
        try:
            if self._failed:
                raise Unavailable(_FAILED)
            if check is not None:
                await check()
            record = make_record(self._inner.version + 1)
            try:
                await self._on(self._log_thread, self._log.append, record)
            except OSError as exc:
                self._fail("wal_append_failed", exc)
                raise Unavailable(_FAILED) from exc
            try:
                applied = await self._apply(record)
            except Exception as exc:
                self._fail("apply_after_log_failed", exc)
                raise EngineError("applying a logged write failed") from exc
            if applied != record.version:
                self._fail("version_mismatch", RuntimeError(f"logged {record.version}, index at {applied}"))
                raise EngineError("index version does not match the log")
        finally:
            self._write_lock.release()
        if self._snapshot_wal_max_bytes and self._log.bytes_since_rotation >= self._snapshot_wal_max_bytes:
            self._snapshot_wanted.set()
        return applied

    async def _apply(self, record: WalRecord) -> int:
        if isinstance(record, UpsertRecord):
            return await self._inner.upsert(record.documents, record.vectors)
        return await self._inner.delete(record.ids)

    def _fail(self, event: str, exc: BaseException) -> None:
        self._failed = True
        log.error(event, data_dir=str(self._dir), exc_info=exc)

    # --- snapshots

    async def snapshot(self) -> SnapshotInfo:
        """Writes a snapshot of the current version (if the newest one is older) and drops the log it covers.

        Runs to the end even if the caller is cancelled, so no half-done rotation is left behind."""
        return await self._shielded(self._snapshot())

    async def _snapshot(self) -> SnapshotInfo:
        async with self._snapshot_lock:
            started = time.perf_counter()
            async with self._write_lock:
                if self._failed:
                    raise Unavailable(_FAILED)
                if self._inner.version == self._snapshot_version:
                    return SnapshotInfo(self._snapshot_version, self._inner.size, 0, 0.0, written=False)
                state = await self._inner.export_state()
                await self._on(self._log_thread, self._log.rotate, state.version + 1)
            size = await self._on(self._snapshot_thread, write_snapshot, self._dir, state)
            self._snapshot_version = state.version
            # Only now that the snapshot is durable may what it covers go.
            await self._on(self._log_thread, self._log.drop_segments_through, state.version)
            await self._on(self._snapshot_thread, remove_snapshots_before, self._dir, state.version)
            info = SnapshotInfo(
                state.version, len(state.documents), size, (time.perf_counter() - started) * 1000, True
            )
            log.info(
                "snapshot_written",
                index_version=info.index_version,
                documents=info.documents,
                bytes=size,
                duration_ms=round(info.duration_ms, 1),
            )
            return info

    async def _snapshot_periodically(self) -> None:
        interval = self._snapshot_interval_s if self._snapshot_interval_s > 0 else None
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._snapshot_wanted.wait(), timeout=interval)
            self._snapshot_wanted.clear()
            try:
                await self.snapshot()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The log still holds every write; the next attempt may succeed (e.g. after space is freed).
                log.exception("snapshot_failed")

    @staticmethod
    async def _on(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

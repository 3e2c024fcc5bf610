"""The few file-system calls durability rests on: complete writes, fsync of data and of directories,
atomic replacement, and an exclusive lock on the data directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StorageCorrupted(Exception):
    """Stored data cannot be trusted and was not silently dropped (a damaged snapshot, or damage in the
    middle of the write-ahead log with acknowledged records after it). Start-up stops with this."""


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def sync_file(fd: int) -> None:
    """Data and size on stable storage. macOS fsync stops at the drive cache; F_FULLFSYNC goes through it."""
    if hasattr(fcntl, "F_FULLFSYNC"):
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fdatasync(fd)


def sync_directory(directory: Path) -> None:
    """Makes creations, renames and deletions in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_durably(path: Path, content: bytes) -> None:
    """Creates `path` holding `content`, never half-written: temporary file, fsync, rename, fsync dir."""
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, content)
        sync_file(fd)
    finally:
        os.close(fd)
    os.replace(staging, path)
    sync_directory(path.parent)


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files are left only by a crash mid-write; nothing ever reads them."""
    for path in directory.glob("*.tmp"):
        path.unlink(missing_ok=True)


class DirectoryLock:
    """An exclusive lock on a data directory, so two servers never write one log. The kernel drops it when
    the process dies, even by SIGKILL."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / "LOCK"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"data_dir {self._path.parent} is in use by another process") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

"""The server as a separate process, for tests that kill it: `rag-grpc serve` on port 0 with a data
directory, no generator (these tests need only documents and retrieval), and its port in a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

START_TIMEOUT_S = 180.0


class ServerProcess:
    def __init__(self, workdir: Path, *options: str, durable: bool = True) -> None:
        """`durable=False` leaves out --data-dir (a Milvus-backed replica keeps no local log)."""
        self.workdir = workdir
        self._durable = durable
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self._port_file = workdir / "port"
        self._options = options
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> str:
        """Starts the server and returns its address once it serves."""
        self._port_file.unlink(missing_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # The server reads only its own settings: no RAG_GRPC_* from the caller, no .env (cwd is workdir).
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_GRPC_")}
        command = [
            sys.executable, "-m", "rag_grpc.cli", "serve",
            "--port", "0", "--port-file", str(self._port_file), "--generator-backend", "none", "--log-json",
            *(["--data-dir", str(self.data_dir)] if self._durable else []), *self._options,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, cwd=self.workdir, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._port_file.exists():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self._process.returncode}:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"server did not start in {START_TIMEOUT_S} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        return f"127.0.0.1:{int(self._port_file.read_text())}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then the exit status."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGTERM)
        try:
            return self._process.wait(timeout_s)
        finally:
            self.kill()

    def send_signal(self, signum: int) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signum)

    def wait(self, timeout_s: float) -> int:
        assert self._process is not None
        return self._process.wait(timeout_s)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events_since_start(self) -> list[dict[str, object]]:
        """The JSON log events this run of the server wrote."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            lines = log.read().decode(errors="replace").splitlines()
        events = []
        for line in lines:
            if line.startswith("{"):
                with suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events

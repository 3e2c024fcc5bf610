"""Two peer servers measured with the same load generator as ours, each in a virtual environment of its own.

- infinity-emb serving the same all-MiniLM-L6-v2 directory, reached through its OpenAI-compatible
  `/embeddings` endpoint, one text per request.
- `transformers serve --continuous-batching` serving the same converted SmolLM2-135M-Instruct directory
  that our engine caches, reached through its streaming chat completions endpoint (SSE).

Each peer runs on a free loopback port in its own process group, is waited on with a bounded timeout and
always stopped. Its environment lives under bench/.venv-<peer> (gitignored) and is installed from PyPI on
first use; later runs find it in place and skip the install. The peers never reach a model hub.

    OMP_WAIT_POLICY=PASSIVE python -m bench.peers --quick   # a small table
    python -m bench.peers --setup-only                      # just build the environments
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp

from bench.embed_retrieve import short_text  # the texts our own Embed bench sends
from bench.load import LoadResult, Sample, run_load

BENCH_DIR = Path(__file__).resolve().parent
LOG_DIR = BENCH_DIR / "out"
# The CPU build this machine keeps on disk (as in the Makefile); a bare `torch` pulls multi-GB CUDA wheels.
TORCH_CPU = "torch==2.13.0"
LOOPBACK = "127.0.0.1"
EMBED_MODEL_NAME = "all-MiniLM-L6-v2"
GENERATE_PROMPT = "Write a long story about a lighthouse keeper and a lost otter."


# ------------------------------------------------------------------ virtual environments


@dataclass(frozen=True)
class PeerEnv:
    """A virtual environment under bench/ built by `pip install` steps run in order."""

    name: str
    steps: tuple[tuple[str, ...], ...]

    @property
    def path(self) -> Path:
        return BENCH_DIR / f".venv-{self.name}"

    def bin(self, executable: str) -> Path:
        return self.path / "bin" / executable

    @property
    def _marker(self) -> Path:
        return self.path / ".bench-installed"

    def ensure(self) -> Path:
        """Creates and fills the environment unless a complete one with the same steps is present.

        Blocking (minutes the first time); the marker is written last, so an interrupted install is
        redone from scratch rather than trusted.
        """
        wanted = json.dumps(self.steps)
        if self._marker.exists() and self._marker.read_text() == wanted:
            return self.path
        started = time.perf_counter()
        print(f"[peers] building {self.path} (first use) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(self.path)], check=True)
        pip = [str(self.bin("python")), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        for step in self.steps:
            subprocess.run([*pip, *step], check=True)
        self._marker.write_text(wanted)
        print(
            f"[peers] {self.name} environment ready in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        return self.path


INFINITY_ENV = PeerEnv(
    "infinity",
    (
        (TORCH_CPU,),
        (TORCH_CPU, "infinity-emb[server,torch]==0.0.78"),
    ),
)


def transformers_env() -> PeerEnv:
    # The same transformers release as the project's, so the model computes exactly what ours does.
    version = metadata.version("transformers")
    # The `transformers` CLI imports requests (for `transformers chat`) without declaring it in [serving].
    return PeerEnv(
        "transformers", ((TORCH_CPU,), (TORCH_CPU, f"transformers[serving]=={version}", "requests"))
    )


# ------------------------------------------------------------------ server processes


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# The threading runtime's settings reach the peers as they reach our server in the bench process: with
# OpenMP's default active waiting, spinning workers starve the other threads on a busy 2-core machine
# (transformers serve fell from ~19 to ~1 token/s here), so `make bench` sets OMP_WAIT_POLICY=PASSIVE.
_THREADING_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_")


def _peer_environment(venv: Path, torch_threads: int, **extra: str) -> dict[str, str]:
    """A small, explicit environment: offline, no telemetry, only the peer's venv on PATH.

    torch_threads has the meaning of our Settings.torch_threads (0 keeps torch's default), so a peer can
    be given the same intra-op threads as our server.
    """
    env = {name: value for name, value in os.environ.items() if name.startswith(_THREADING_PREFIXES)}
    env |= {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
    }
    if torch_threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(torch_threads)
    env.update(extra)
    return env


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _stop_group(process: asyncio.subprocess.Process, grace_s: float = 10.0) -> None:
    """SIGTERM to the whole process group, SIGKILL after grace_s; the group dies either way."""
    for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL also takes what the leader left behind
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break  # nobody left in the group
        with suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace_s)
    await process.wait()


@asynccontextmanager
async def running_server(
    name: str, argv: list[str], env: dict[str, str], ready_url: str, timeout_s: float, log_dir: Path = LOG_DIR
) -> AsyncIterator[None]:
    """Starts argv in a new process group, waits until ready_url answers 200, and stops it on exit.

    Its output goes to log_dir/<name>.log, whose tail is quoted if it exits or is not ready in time.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        await _wait_ready(name, process, ready_url, timeout_s, log_path)
        yield
    finally:
        # Shielded: a cancelled bench (Ctrl-C) must still take the server down.
        await asyncio.shield(_stop_group(process))


async def _wait_ready(
    name: str, process: asyncio.subprocess.Process, url: str, timeout_s: float, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{_log_tail(log_path)}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{name} not ready after {timeout_s:.0f} s:\n{_log_tail(log_path)}")


def _http_session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    # One keep-alive connection per client, so the peer sees `concurrency` steady connections.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


# ------------------------------------------------------------------ infinity-emb


def our_embed_batch_cap() -> int:
    """Our embedder batcher's cap on texts per model call (embed_batch_max_size, 64 by default)."""
    from rag_grpc.settings import EngineSettings

    return EngineSettings.model_validate({}).embed_batch_max_size


@asynccontextmanager
async def infinity_server(
    timeout_s: float = 300.0, batch_size: int | None = None, torch_threads: int = 0
) -> AsyncIterator[str]:
    """infinity-emb serving the bundled MiniLM directory; yields its base URL.

    batch_size is infinity's largest model batch; by default our embedder's cap, so that neither
    side may batch more texts per model call than the other (infinity's own default is 32).
    """
    batch_size = batch_size if batch_size is not None else our_embed_batch_cap()
    from rag_grpc.engines.model_files import BUNDLED_EMBEDDER, resolve_embedder

    venv = await asyncio.to_thread(INFINITY_ENV.ensure)
    port = free_loopback_port()
    argv = [
        str(INFINITY_ENV.bin("infinity_emb")),
        "v2",
        "--model-id", resolve_embedder(BUNDLED_EMBEDDER),
        "--served-model-name", EMBED_MODEL_NAME,
        "--engine", "torch",
        "--device", "cpu",
        "--batch-size", str(batch_size),
        "--dtype", "float32",
        # Our engine runs the model eagerly and without a result cache; so does infinity here.
        "--no-compile",
        "--no-vector-disk-cache",
        "--log-level", "warning",
        "--host", LOOPBACK,
        "--port", str(port),
    ]  # fmt: skip
    env = _peer_environment(venv, torch_threads, INFINITY_ANONYMOUS_USAGE_STATS="0")
    base_url = f"http://{LOOPBACK}:{port}"
    async with running_server("infinity", argv, env, f"{base_url}/health", timeout_s):
        yield base_url


async def infinity_embed(
    concurrency: int = 64,
    duration_s: float = 20.0,
    max_requests: int = 20_000,
    *,
    warmup_s: float = 3.0,
    text_for: Callable[[int], str] = short_text,
    torch_threads: int = 0,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Texts/s and latency of infinity-emb under `concurrency` closed-loop clients, one text per request.

    batch_size is infinity's largest model batch; None gives it our embedder's cap (64).
    """
    batch_size = batch_size if batch_size is not None else our_embed_batch_cap()
    async with (
        infinity_server(batch_size=batch_size, torch_threads=torch_threads) as base_url,
        _http_session(concurrency, timeout_s=60) as session,
    ):
        url = f"{base_url}/embeddings"

        async def call(i: int) -> Sample:
            body = {"model": EMBED_MODEL_NAME, "input": [text_for(i)]}
            async with session.post(url, json=body) as response:
                response.raise_for_status()
                answer = await response.json()
            if len(answer["data"]) != 1 or len(answer["data"][0]["embedding"]) != 384:
                raise RuntimeError(f"unexpected infinity answer: {str(answer)[:200]}")
            return Sample(items=1)

        result = await run_load(call, concurrency, duration_s, max_requests, warmup_s=warmup_s)
    return {"peer": "infinity-emb", "batch_size": batch_size, **_embed_summary(result)}


def _embed_summary(result: LoadResult) -> dict[str, Any]:
    summary = result.summary()
    return {
        "clients": result.concurrency,
        "texts_per_s": summary["items_per_s"],
        "p50_ms": summary["latency_p50_ms"],
        "p99_ms": summary["latency_p99_ms"],
        "requests": summary["ok_requests"],
        "non_ok": summary["non_ok"],
    }


# ------------------------------------------------------------------ transformers serve


def converted_smollm2_dir() -> Path:
    """The safetensors copy of the bundled GGUF that our engine caches (converted here if missing)."""
    from rag_grpc.engines.model_files import BUNDLED_GENERATOR, converted_model_dir, resolve_generator_source
    from rag_grpc.settings import Settings

    settings = Settings()
    return converted_model_dir(resolve_generator_source(BUNDLED_GENERATOR), settings.engines.model_cache_dir)


@asynccontextmanager
async def transformers_server(
    model_dir: Path, timeout_s: float = 300.0, torch_threads: int = 0
) -> AsyncIterator[str]:
    """`transformers serve --continuous-batching` with model_dir preloaded; yields its base URL."""
    env_spec = transformers_env()
    venv = await asyncio.to_thread(env_spec.ensure)
    port = free_loopback_port()
    argv = [
        str(env_spec.bin("transformers")),
        "serve",
        str(model_dir),
        "--continuous-batching",
        # Its CPU default sizes the paged KV cache at 60% of RAM (14 GB here), and every decode step then
        # costs about a second. 64 pages of 32 tokens hold 16 streams of prompt + 64 tokens with room to spare.
        "--cb-block-size", "32",
        "--cb-num-blocks", "64",
        "--cb-max-batch-tokens", "1024",
        "--device", "cpu",
        "--dtype", "float32",
        "--host", LOOPBACK,
        "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    base_url = f"http://{LOOPBACK}:{port}"
    env = _peer_environment(venv, torch_threads)
    async with running_server("transformers-serve", argv, env, f"{base_url}/health", timeout_s):
        yield base_url


def _chat_body(model_dir: Path, prompt: str, tokens: int) -> dict[str, Any]:
    """A streamed greedy chat completion of exactly `tokens` tokens.

    `transformers serve` has no OpenAI-style `min_tokens` or `ignore_eos` (it refuses unknown fields), and
    with --continuous-batching each request passes the batch manager only max_new_tokens and
    eos_token_id. The GenerationConfig sent here names no end-of-sequence token, so the manager runs with
    eos_token_id -1 (disabled; see transformers/generation/continuous_batching/continuous_api.py): the
    stream stops at max_new_tokens only, as ours does with min_tokens = max_tokens. The bench checks it:
    the table shows the mean and the fewest tokens per stream.
    """
    return {
        "model": str(model_dir),  # the server is pinned to this model and refuses any other name
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "temperature": 0.0,
        "max_tokens": tokens,
        # A whole GenerationConfig as JSON, which replaces the model's: it names no end-of-sequence token.
        "generation_config": json.dumps({"max_new_tokens": tokens, "do_sample": False}),
    }


async def _stream_chat(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Sample:
    """Reads one SSE chat completion; counts tokens from the final usage chunk (chunks may carry several)."""
    first_token_at: float | None = None
    completion_tokens: int | None = None
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"transformers serve stream error: {chunk['error']}")
            for choice in chunk.get("choices", ()):
                if first_token_at is None and choice.get("delta", {}).get("content"):
                    first_token_at = time.perf_counter()
            if chunk.get("usage"):
                completion_tokens = int(chunk["usage"]["completion_tokens"])
    if completion_tokens is None:
        raise RuntimeError("transformers serve stream ended without usage")
    return Sample(items=completion_tokens, first_item_at=first_token_at)


async def transformers_serve_generate(
    streams: Sequence[int] = (1, 16),
    tokens: int = 64,
    duration_s: float = 30.0,
    max_requests: int = 200,
    *,
    warmup_s: float = 5.0,
    prompt: str = GENERATE_PROMPT,
    torch_threads: int = 0,
) -> dict[str, Any]:
    """Aggregate tokens/s and time to first token for each number of concurrent streams (one server start).

    Every stream is a chat completion of `tokens` tokens at temperature 0; the result holds one row per
    entry of `streams`, each measured with max_requests streams at most within duration_s.
    """
    model_dir = await asyncio.to_thread(converted_smollm2_dir)
    rows: list[dict[str, Any]] = []
    server = transformers_server(model_dir, torch_threads=torch_threads)
    async with server as base_url, _http_session(max(streams), timeout_s=300) as session:
        url = f"{base_url}/v1/chat/completions"
        body = _chat_body(model_dir, prompt, tokens)
        for count in streams:
            result = await run_load(
                lambda _: _stream_chat(session, url, body), count, duration_s, max_requests, warmup_s=warmup_s
            )
            rows.append(generate_summary(result))
    return {"peer": "transformers serve", "tokens": tokens, "rows": rows}


def generate_summary(result: LoadResult) -> dict[str, Any]:
    """One Generate row, ours or the peer's: rates and TTFT of OK streams, their length, other codes."""
    summary = result.summary()
    return {
        "streams": result.concurrency,
        "tokens_per_s": summary["items_per_s"],
        "ttft_p50_ms": summary["ttft_p50_ms"],
        "ttft_p99_ms": summary["ttft_p99_ms"],
        "tokens_per_stream": summary["items_per_request"],
        "fewest_tokens_per_stream": min((m.items for m in result.ok), default=0),
        "requests": summary["ok_requests"],
        "non_ok": summary["non_ok"],
    }


# ------------------------------------------------------------------ python -m bench.peers


def _print_table(embed: dict[str, Any] | None, generate: dict[str, Any] | None) -> None:
    if embed is not None:
        print(f"\n{embed['peer']}: Embed, {embed['clients']} clients x one text per request, "
              f"batch size {embed['batch_size']}")  # fmt: skip
        print(f"  texts/s {embed['texts_per_s']:8.1f}   p50 {embed['p50_ms']:7.1f} ms   p99 {embed['p99_ms']:7.1f} ms"
              f"   ({embed['requests']} requests)")  # fmt: skip
    if generate is not None:
        print(f"\n{generate['peer']}: Generate, streams of {generate['tokens']} tokens at temperature 0")
        print("  streams   tokens/s   TTFT p50 ms   TTFT p99 ms   tokens/stream   streams done")
        for row in generate["rows"]:
            print(
                f"  {row['streams']:7d}   {row['tokens_per_s']:8.1f}   {row['ttft_p50_ms']:11.1f}   "
                f"{row['ttft_p99_ms']:11.1f}   {row['tokens_per_stream']:13.1f}   {row['requests']:12d}"
            )


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    quick, threads = args.quick, args.torch_threads
    results: dict[str, Any] = {"load_average_before": os.getloadavg(), "torch_threads": threads}
    if args.peer in ("all", "infinity"):
        results["infinity"] = await infinity_embed(
            64,
            duration_s=8 if quick else 20,
            max_requests=4000 if quick else 20_000,
            warmup_s=2 if quick else 3,
            torch_threads=threads,
        )
    if args.peer in ("all", "transformers"):
        results["transformers_serve"] = await transformers_serve_generate(
            (1, 16),
            64,
            duration_s=15 if quick else 30,
            max_requests=48 if quick else 200,
            warmup_s=3 if quick else 5,
            torch_threads=threads,
        )
    results["load_average_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (seconds, tens of requests)")
    parser.add_argument("--peer", choices=("all", "infinity", "transformers"), default="all")
    parser.add_argument("--setup-only", action="store_true", help="build the peer environments and exit")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="intra-op threads for the peers; 0 keeps torch's default"
    )
    args = parser.parse_args()
    if args.setup_only:
        INFINITY_ENV.ensure()
        transformers_env().ensure()
        return
    results = asyncio.run(_main(args))
    _print_table(results.get("infinity"), results.get("transformers_serve"))
    print(
        f"\ntorch threads: {results['torch_threads'] or 'default'}; load average (1, 5, 15 min) "
        f"before {results['load_average_before']}, after {results['load_average_after']}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

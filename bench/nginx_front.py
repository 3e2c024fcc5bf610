"""deploy/nginx/rag-grpc.conf run by a real nginx (Debian's nginx-light) on loopback, in front of the
replicas a test names: the upstream's server line and the listen port are the only things replaced."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = Path(__file__).parents[1] / "deploy" / "nginx" / "rag-grpc.conf"


def nginx_binary() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        raise RuntimeError("nginx is not installed (make test installs it: apt-get install -y nginx-light)")
    return binary


def render(workdir: Path, upstreams: list[str], port: int) -> Path:
    """A complete nginx.conf in `workdir`: the deploy config inside a minimal main context."""
    site = CONF.read_text()
    servers = "\n".join(f"    server {address} max_fails=1 fail_timeout=5s;" for address in upstreams)
    site, replaced = re.subn(r"^    server rag-grpc:50051 .*;$", servers, site, flags=re.MULTILINE)
    assert replaced == 1, "deploy/nginx/rag-grpc.conf: the upstream's server line changed"
    site, replaced = re.subn(r"listen 8080 http2;", f"listen 127.0.0.1:{port} http2;", site)
    assert replaced == 1, "deploy/nginx/rag-grpc.conf: the listen line changed"
    (workdir / "site.conf").write_text(site)
    main = f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    include {workdir}/site.conf;
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(main)
    return path


def check(conf: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the rendered config."""
    return subprocess.run(
        [nginx_binary(), "-t", "-c", str(conf), "-e", str(conf.parent / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )


class NginxFront:
    def __init__(self, workdir: Path, upstreams: list[str], port: int) -> None:
        self.address = f"127.0.0.1:{port}"
        self._conf = render(workdir, upstreams, port)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NginxFront:
        command = [nginx_binary(), "-c", str(self._conf), "-e", str(self._conf.parent / "error.log")]
        self._process = subprocess.Popen([*command, "-g", "daemon off;"])
        host, port = self.address.split(":")
        deadline = time.monotonic() + 10
        while not _listening(host, int(port)):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(self._conf.parent / 'error.log').read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0

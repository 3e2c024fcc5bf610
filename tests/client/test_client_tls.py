"""The client's TLS, mutual TLS and API key options against a real server that requires all three, from
the library and from the command line (`rag-grpc search` with the shared connection options)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc_client import TLS, AsyncClient, ClientOptions, Retries, Unauthenticated, Unavailable
from tests.api.interceptors.conftest import ALICE_KEY, API_KEYS, serving
from tests.tls_certificates import certificate_authority, client_certificate, server_certificate

ROOT = Path(__file__).resolve().parents[2]
NO_RETRY = ClientOptions(retries=Retries(unavailable_attempts=1))


async def test_mutual_tls_with_an_api_key(
    engines: Engines, settings: Settings, tmp_path: Path, isolated_tag: str
) -> None:
    ca = certificate_authority("client test CA")
    server_certificate(ca).write(tmp_path, "server")
    cert, key = client_certificate(ca, "cli").write(tmp_path, "client")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "key").write_text(ALICE_KEY + "\n")
    tls = TLS.from_files(ca=tmp_path / "ca.crt", cert=cert, key=key)
    async with serving(
        engines,
        settings,
        api_keys=API_KEYS,
        tls_cert_file=tmp_path / "server.crt",
        tls_key_file=tmp_path / "server.key",
        tls_client_ca_file=tmp_path / "ca.crt",
    ) as s:
        async with AsyncClient(s.target, api_key=ALICE_KEY, tls=tls) as client:
            assert (
                await client.upsert(
                    [
                        {
                            "id": isolated_tag,
                            "text": "Sent over mutual TLS.",
                            "metadata": {"test": isolated_tag},
                        }
                    ]
                )
            ).count == 1
        async with AsyncClient(s.target, api_key="not-a-key", tls=tls) as client:
            with pytest.raises(Unauthenticated):
                await client.info()
        async with AsyncClient(
            s.target, api_key=ALICE_KEY, tls=TLS(ca=ca.cert_pem), options=NO_RETRY
        ) as client:
            with pytest.raises(Unavailable):  # no client certificate: the handshake fails
                await client.info()

        connection = ["--target", s.target, "--api-key-file", str(tmp_path / "key")]
        connection += [
            "--tls-ca-file",
            str(tmp_path / "ca.crt"),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
        ]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rag_grpc.cli", "search", "mutual TLS", "--json", "--filter", f"test={isolated_tag}", *connection,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, err.decode()
        assert f'"id": "{isolated_tag}"' in out.decode()

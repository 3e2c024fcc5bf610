"""TLS and mutual TLS with throwaway certificates: good clients are served; plaintext clients, clients
without a certificate, with one from another CA or an expired one fail the handshake (UNAVAILABLE)
and the server goes on serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pydantic
import pytest

from rag_grpc.engines import Engines
from rag_grpc.settings import Settings
from rag_grpc.v1 import rag_pb2 as pb
from rag_grpc.v1 import rag_pb2_grpc as pb_grpc
from tests.api.interceptors.conftest import RunningServer, serving
from tests.helpers import expect_status
from tests.tls_certificates import Issued, certificate_authority, client_certificate, server_certificate

HANDSHAKE_FAILED = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Issued
    server: Issued
    client: Issued
    stranger: Issued  # signed by a CA the server does not trust
    expired: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = certificate_authority("rag-grpc test CA"), certificate_authority("someone else's CA")
    made = Pki(
        directory,
        ca,
        server_certificate(ca),
        client_certificate(ca, "good-client"),
        client_certificate(other_ca, "stranger"),
        client_certificate(ca, "expired-client", valid_days=(-30, -1)),
    )
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    made.server.write(directory, "server")
    return made


def _tls(pki: Pki, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )


async def _info(target: str, credentials: grpc.ChannelCredentials | None) -> pb.InfoResponse:
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        return await pb_grpc.InfoServiceStub(channel).Info(pb.InfoRequest(), timeout=10)


@pytest.fixture(scope="module")
async def tls_server(engines: Engines, settings: Settings, pki: Pki) -> AsyncIterator[RunningServer]:
    d = pki.directory
    async with serving(
        engines,
        settings,
        secure_channel=_tls(pki),
        tls_cert_file=d / "server.crt",
        tls_key_file=d / "server.key",
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def mtls_server(engines: Engines, settings: Settings, pki: Pki) -> AsyncIterator[RunningServer]:
    d = pki.directory
    async with serving(
        engines,
        settings,
        secure_channel=_tls(pki, pki.client),
        tls_cert_file=d / "server.crt",
        tls_key_file=d / "server.key",
        tls_client_ca_file=d / "ca.crt",
    ) as s:
        yield s


async def test_tls_serves_a_client_that_trusts_the_ca(tls_server: RunningServer, pki: Pki) -> None:
    assert (await _info(tls_server.target, _tls(pki))).embedder.dimension == 384


async def test_tls_refuses_plaintext_and_untrusting_clients(tls_server: RunningServer, pki: Pki) -> None:
    await expect_status(_info(tls_server.target, None), HANDSHAKE_FAILED)
    stranger_roots = grpc.ssl_channel_credentials(
        root_certificates=certificate_authority("not the server's CA").cert_pem
    )
    await expect_status(_info(tls_server.target, stranger_roots), HANDSHAKE_FAILED)
    assert (await tls_server.stubs.info.Info(pb.InfoRequest())).embedder.dimension == 384


async def test_mutual_tls_serves_a_client_with_a_good_certificate(
    mtls_server: RunningServer, pki: Pki
) -> None:
    assert (await _info(mtls_server.target, _tls(pki, pki.client))).embedder.dimension == 384


@pytest.mark.parametrize("client", ["none", "stranger", "expired"])
async def test_mutual_tls_refuses_bad_client_certificates(
    mtls_server: RunningServer, pki: Pki, client: str
) -> None:
    presented = {"none": None, "stranger": pki.stranger, "expired": pki.expired}[client]
    await expect_status(_info(mtls_server.target, _tls(pki, presented)), HANDSHAKE_FAILED)
    await expect_status(_info(mtls_server.target, None), HANDSHAKE_FAILED)
    # The refused handshakes leave the server serving good clients.
    assert (await mtls_server.stubs.info.Info(pb.InfoRequest())).embedder.dimension == 384


def test_tls_settings_must_come_in_pairs(pki: Pki) -> None:
    d = pki.directory
    with pytest.raises(pydantic.ValidationError, match="together"):
        Settings(_env_file=None, tls_cert_file=d / "server.crt")  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="mutual TLS"):
        Settings(_env_file=None, tls_client_ca_file=d / "ca.crt")  # type: ignore[call-arg]

"""Connection options and the gRPC channel they make: target(s), API key, TLS/mTLS, default deadlines and
retries.

Two retry mechanisms, for two situations:
- UNAVAILABLE (server down, restarting, draining, overloaded queue): gRPC's own retry policy from the
  service config, for the calls that are safe to repeat (see IDEMPOTENT). It retries with jittered
  exponential backoff inside the call's deadline, and never once a response message has arrived.
- RESOURCE_EXHAUSTED with a RetryInfo delay (the caller is over a rate limit or its generation quota): the
  client waits the delay the server asked for, when it is at most `max_wait_s`, and tries again; the
  refused call did no work, so any method may be repeated. `resource_exhausted_attempts=1` turns it off.

Load balancing is client-side round_robin over every address the target resolves to (a DNS name with
several records, or several addresses given as a list), with gRPC health checking: a server whose
health service reports NOT_SERVING gets no calls until it recovers.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

# Methods gRPC may send again after UNAVAILABLE. Generate reads only and is retried only before its first
# message; Upsert replaces by id, so a repeat leaves the same documents. Delete is left out (a repeat of a
# delete that did happen fails with NOT_FOUND), and so is the client-streaming Ingest (its stream would
# have to be buffered).
IDEMPOTENT: tuple[tuple[str, str | None], ...] = (
    ("rag_grpc.v1.EmbedService", None),
    ("rag_grpc.v1.RetrieveService", None),
    ("rag_grpc.v1.GenerateService", None),
    ("rag_grpc.v1.InfoService", None),
    ("rag_grpc.v1.DocumentService", "Upsert"),
    ("grpc.health.v1.Health", "Check"),
)


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS with `ca` (PEM; None: the system roots); mutual TLS when `cert` and `key` are given too."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    # The name to check the server's certificate against, when it is not the target's host.
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLS:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca), read(cert), read(key), server_name)


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Default deadline of each call in seconds (a call's `timeout=` overrides it; None: no deadline).
    Generate's covers the whole stream, Ingest's the whole upload."""

    embed: float | None = 30.0
    retrieve: float | None = 30.0
    generate: float | None = 300.0
    upsert: float | None = 120.0
    delete: float | None = 30.0
    ingest: float | None = 3600.0
    info: float | None = 10.0
    health: float | None = 5.0


@dataclass(frozen=True, slots=True)
class Retries:
    # UNAVAILABLE, by gRPC's retry policy (which allows at most 5 attempts).
    unavailable_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    # RESOURCE_EXHAUSTED with RetryInfo: attempts in all (1: never wait and retry), longest wait honoured.
    resource_exhausted_attempts: int = 3
    max_wait_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ClientOptions:
    api_key: str | None = None
    tls: TLS | None = None
    deadlines: Deadlines = field(default_factory=Deadlines)
    retries: Retries = field(default_factory=Retries)
    # Health service that client-side health checking watches ("" is the server's overall health; None
    # turns health checking off).
    health_check_service: str | None = ""
    # How soon a lost connection is tried again, at first and at most.
    reconnect_backoff_s: tuple[float, float] = (0.25, 5.0)
    # Extra channel arguments, passed to gRPC as they are.
    channel_options: Sequence[tuple[str, Any]] = ()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


def service_config(options: ClientOptions) -> dict[str, Any]:
    retries = options.retries
    names = [{"service": s} if m is None else {"service": s, "method": m} for s, m in IDEMPOTENT]
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if options.health_check_service is not None:
        config["healthCheckConfig"] = {"serviceName": options.health_check_service}
    if retries.unavailable_attempts > 1:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": retries.unavailable_attempts,
                    "initialBackoff": f"{retries.initial_backoff_s:.3f}s",
                    "maxBackoff": f"{retries.max_backoff_s:.3f}s",
                    "backoffMultiplier": retries.backoff_multiplier,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def channel_options(options: ClientOptions) -> list[tuple[str, Any]]:
    first, most = options.reconnect_backoff_s
    result: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(service_config(options))),
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", int(first * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(first * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(most * 1000)),
    ]
    if options.tls is not None and options.tls.server_name:
        result.append(("grpc.ssl_target_name_override", options.tls.server_name))
    result.extend(options.channel_options)
    return result


def credentials(tls: TLS) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )


def _split_host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} needs the form host:port")
    return host.strip("[]"), port


def target_uri(target: str | Sequence[str]) -> str:
    """One target as gRPC reads it (`host:port`, `dns:///name:port`, ...), or a list of `host:port`
    addresses as one `ipv4:`/`ipv6:` target; names in a list are resolved once, here."""
    if isinstance(target, str):
        return target
    if len(target) == 1:
        return target[0]
    v4: list[str] = []
    v6: list[str] = []
    for address in target:
        host, port = _split_host_port(address)
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            infos = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
            ips = [ipaddress.ip_address(info[4][0]) for info in infos]
        for ip in dict.fromkeys(ips):
            (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if v4:
        return "ipv4:" + ",".join(v4)
    return "ipv6:" + ",".join(v6)

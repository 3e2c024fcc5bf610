"""Server TLS credentials from the settings: TLS when a certificate is set, mutual TLS with a client CA."""

from __future__ import annotations

import grpc

from rag_grpc.settings import SecuritySettings


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials | None:
    """None means plaintext. With tls_client_ca_file, a client without a certificate signed by that CA
    fails the handshake (the call never reaches a handler)."""
    if security.tls_cert_file is None or security.tls_key_file is None:
        return None
    client_ca = security.tls_client_ca_file.read_bytes() if security.tls_client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(security.tls_key_file.read_bytes(), security.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )

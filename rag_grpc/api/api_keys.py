"""API keys: loaded from the settings, kept only as SHA-256 hashes, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rag_grpc.api.call_context import Caller, Role
from rag_grpc.settings import SecuritySettings

MIN_KEY_CHARS = 16
# Bearer tokens (RFC 6750 b64token): longer ones are refused before any hashing.
MAX_KEY_CHARS = 512
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._@")
MAX_NAME_CHARS = 64


def is_caller_name(name: str) -> bool:
    """Names become log fields, metric labels and Redis key parts: short, plain characters."""
    return 0 < len(name) <= MAX_NAME_CHARS and all(c in _NAME_CHARS for c in name)


def _caller(name: str, role: str, where: str) -> Caller:
    if not is_caller_name(name):
        raise ValueError(f"{where}: a key name needs 1..{MAX_NAME_CHARS} characters of A-Z a-z 0-9 - . _ @")
    try:
        return Caller(name, Role(role))
    except ValueError:
        raise ValueError(f"{where}: role must be one of {[r.value for r in Role]}, got {role!r}") from None


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def is_token(text: str) -> bool:
    return 0 < len(text) <= MAX_KEY_CHARS and all(c in _TOKEN_CHARS for c in text)


def new_key() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ApiKey:
    caller: Caller
    sha256: bytes


class KeyRing:
    """The configured keys. Empty means authentication is off."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)
        names = [k.caller.name for k in self._keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")

    def __len__(self) -> int:
        return len(self._keys)

    def caller_for(self, presented: str) -> Caller | None:
        """The caller whose key is `presented`, or None. Every stored hash is compared, whatever matches,
        so the time taken says nothing about which key (or how much of one) was right."""
        digest = key_hash(presented)
        found: Caller | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key.caller
        return found

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> KeyRing:
        keys: list[ApiKey] = []
        if settings.api_keys is not None:
            keys += _parse_inline(settings.api_keys.get_secret_value())
        if settings.api_keys_file is not None:
            keys += _parse_file(settings.api_keys_file)
        return cls(keys)


def _parse_inline(spec: str) -> list[ApiKey]:
    keys = []
    for number, entry in enumerate(e.strip() for e in spec.split(",")):
        if not entry:
            continue
        # Never echo the entry itself: it holds a key.
        parts = entry.split(":", 2)
        where = f"api_keys entry {number}"
        if len(parts) != 3:
            raise ValueError(f"{where}: expected 'name:role:key'")
        name, role, key = parts
        caller = _caller(name, role, where)
        if len(key) < MIN_KEY_CHARS or not is_token(key):
            raise ValueError(
                f"{where} ({name}): a key needs {MIN_KEY_CHARS}..{MAX_KEY_CHARS} characters of A-Z a-z 0-9 - . _ ~ + / ="
            )
        keys.append(ApiKey(caller, key_hash(key)))
    return keys


def _parse_file(path: Path) -> list[ApiKey]:
    keys = []
    for number, raw_line in enumerate(path.read_text().splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path}:{number}"
        if len(parts) != 3:
            raise ValueError(f"{where}: expected 'name role sha256-hex'")
        name, role, hex_digest = parts
        try:
            digest = bytes.fromhex(hex_digest.removeprefix("sha256:"))
        except ValueError:
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError(f"{where}: the third field must be the 64 hex digits of the key's SHA-256")
        keys.append(ApiKey(_caller(name, role, where), digest))
    return keys

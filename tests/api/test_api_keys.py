"""Loading API keys: inline from the settings or from a file of hashes; bad entries fail loudly
without echoing any key; lookups match only the exact key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from rag_grpc.api.api_keys import KeyRing, key_hash
from rag_grpc.api.call_context import Caller, Role
from rag_grpc.settings import Settings

KEY_A = "a-perfectly-fine-key-0123456789"
KEY_B = "another-fine-key-abcdefghijklmn"


def _ring(**values: object) -> KeyRing:
    return KeyRing.from_settings(Settings(_env_file=None, **values).security)  # type: ignore[arg-type]


def test_inline_and_file_keys_together(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops keys\nreports read-only {key_hash(KEY_B).hex()}  # the nightly job\n\n")
    ring = _ring(api_keys=f"svc:read-write:{KEY_A}", api_keys_file=keys_file)
    assert len(ring) == 2
    assert ring.caller_for(KEY_A) == Caller("svc", Role.READ_WRITE)
    assert ring.caller_for(KEY_B) == Caller("reports", Role.READ_ONLY)
    for wrong in ("", KEY_A[:-1], KEY_A + "x", KEY_A.upper(), key_hash(KEY_A).hex()):
        assert ring.caller_for(wrong) is None


def test_no_keys_means_authentication_off() -> None:
    assert len(_ring()) == 0
    assert len(_ring(api_keys=" , ")) == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"svc:{KEY_A}", "name:role:key"),
        (f"svc:admin:{KEY_A}", "role must be one of"),
        ("svc:read-only:short-key", "a key needs"),
        (f"svc:read-only:{KEY_A} with space", "a key needs"),
        (f":read-only:{KEY_A}", "key name"),
        (f"svc:read-only:{KEY_A},svc:read-write:{KEY_B}", "unique"),
    ],
)
def test_bad_inline_entries_are_refused_without_echoing_keys(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        _ring(api_keys=spec)
    assert KEY_A not in str(caught.value) and KEY_B not in str(caught.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("svc read-only", "expected"),
        ("svc read-only not-hex", "SHA-256"),
        (f"svc read-only {key_hash(KEY_A).hex()[:-2]}", "SHA-256"),
        (f"svc owner {key_hash(KEY_A).hex()}", "role"),
    ],
)
def test_bad_key_file_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# header\n{line}\n")
    with pytest.raises(ValueError, match=f"keys:2: .*{message}"):
        _ring(api_keys_file=keys_file)


def test_settings_never_print_inline_keys() -> None:
    settings = Settings(_env_file=None, api_keys=f"svc:read-write:{KEY_A}")  # type: ignore[call-arg]
    assert isinstance(settings.security.api_keys, SecretStr)
    assert KEY_A not in repr(settings) and KEY_A not in str(settings.model_dump())


def test_new_api_key_command_prints_a_usable_file_line(tmp_path: Path) -> None:
    output = subprocess.run(
        [sys.executable, "-m", "rag_grpc.cli", "new-api-key", "batch-job", "--role", "read-write"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    key = output[0].rsplit(" ", 1)[1]
    line = output[1].split(": ", 1)[1]
    keys_file = tmp_path / "keys"
    keys_file.write_text(line + "\n")
    assert _ring(api_keys_file=keys_file).caller_for(key) == Caller("batch-job", Role.READ_WRITE)

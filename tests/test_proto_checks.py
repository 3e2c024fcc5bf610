"""The proto checks that `make test` runs (`make proto-check`: buf lint and buf breaking against the
released proto in protos/baseline/) catch what they are there for: these tests run the target's own
commands, read from `make -n`, on a copy of the proto with a deliberate change."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF = "clients/node/node_modules/.bin/buf"


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    """`make proto-check`'s buf commands, with buf's path made absolute so that they run anywhere."""
    if not (ROOT / BUF).exists():
        pytest.fail("buf is not installed: `make proto-check` installs it (npm ci in clients/node)")
    dry_run = subprocess.run(
        ["make", "-s", "-n", "proto-check"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    found = [shlex.split(line) for line in dry_run.splitlines() if line.startswith(BUF + " ")]
    assert [command[1] for command in found] == ["lint", "breaking"], dry_run
    return [[str(ROOT / BUF), *command[1:]] for command in found]


def _run(commands: list[list[str]], workspace: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    return {
        command[1]: subprocess.run(
            command, cwd=workspace, capture_output=True, text=True, timeout=60, check=False
        )
        for command in commands
    }


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of the buf workspace (buf.yaml, protos/ with the baseline) to change."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def _edit(workspace: Path, old: str, new: str) -> None:
    proto = workspace / "protos" / "rag_grpc" / "v1" / "rag.proto"
    text = proto.read_text()
    assert text.count(old) == 1, old
    proto.write_text(text.replace(old, new))


def test_the_proto_as_it_is_passes(commands: list[list[str]], workspace: Path) -> None:
    for name, result in _run(commands, workspace).items():
        assert result.returncode == 0, (name, result.stdout, result.stderr)


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        pytest.param(
            "  float score = 2;\n  string text = 3;",
            "  float score = 2;\n  string text = 5;",
            'Previously present field "3" with name "text" on message "Hit" was deleted',
            id="renumbered-field",
        ),
        pytest.param(
            "  uint32 prompt_tokens = 1;\n  uint32 completion_tokens = 2;",
            "  uint32 input_tokens = 1;\n  uint32 completion_tokens = 2;",
            'on message "Usage" changed name from "prompt_tokens" to "input_tokens"',
            id="renamed-field",
        ),
        pytest.param(
            "  uint32 upserted = 1;",
            "  uint64 upserted = 1;",
            'changed type from "uint32" to "uint64"',
            id="changed-type",
        ),
        pytest.param(
            "  rpc Snapshot(SnapshotRequest) returns (SnapshotResponse);\n",
            "",
            'Previously present RPC "Snapshot" on service "AdminService" was deleted',
            id="removed-rpc",
        ),
    ],
)
def test_a_breaking_change_fails_buf_breaking(
    commands: list[list[str]], workspace: Path, old: str, new: str, complaint: str
) -> None:
    _edit(workspace, old, new)
    results = _run(commands, workspace)
    assert results["breaking"].returncode != 0
    assert complaint in results["breaking"].stdout, results["breaking"].stdout


def test_an_addition_passes_buf_breaking(commands: list[list[str]], workspace: Path) -> None:
    # A new optional field is what compatible evolution looks like.
    _edit(
        workspace,
        "  string route = 7;\n}",
        "  string route = 7;\n  // Added.\n  uint32 cached_tokens = 8;\n}",
    )
    results = _run(commands, workspace)
    assert results["breaking"].returncode == 0, results["breaking"].stdout
    assert results["lint"].returncode == 0, results["lint"].stdout


def test_a_lint_violation_fails_buf_lint(commands: list[list[str]], workspace: Path) -> None:
    # An added enum without the STANDARD rules' zero value FOO_UNSPECIFIED, in a new message.
    _edit(
        workspace,
        "message InfoRequest {}",
        "message InfoRequest {}\n\nenum Detail {\n  BRIEF = 0;\n  FULL = 1;\n}",
    )
    results = _run(commands, workspace)
    assert results["lint"].returncode != 0
    assert "ENUM_ZERO_VALUE_SUFFIX" in results["lint"].stdout or "UNSPECIFIED" in results["lint"].stdout

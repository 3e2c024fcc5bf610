"""Generates the gRPC stubs from protos/ whenever the package is built or installed.

Stubs are build artefacts (gitignored, never edited by hand). protoc runs in-process through
grpc_tools so that isolated builds use the pinned grpcio-tools, not whatever is on PATH. The .pyi type
stubs beside the modules come from mypy-protobuf's protoc plugins (both pinned in pyproject.toml's
build requirements): unlike protoc's own --pyi_out they type the gRPC stubs and servicers too, and they
pass mypy --strict as generated.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

ROOT = Path(__file__).resolve().parent


def _plugin(name: str) -> str:
    """`--plugin=` for a protoc plugin installed as a console script: on PATH in pip's build environment,
    next to the interpreter in a virtual environment that was not activated."""
    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    path = shutil.which(name, path=search)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH; install mypy-protobuf (a build requirement)")
    return f"--plugin={name}={path}"


def _protoc(proto_dir: Path, protos: list[str]) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        _plugin("protoc-gen-mypy"),
        _plugin("protoc-gen-mypy_grpc"),
        f"--python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")


# vLLM's gRPC worker protocol, from the pinned smg-grpc-proto (a build requirement). Its own generated
# modules register their files as plain "common.proto", which pymilvus registers too: the two cannot be
# imported into one process. Compiled here under rag_grpc/vllm_protocol/, the same messages and service
# (package vllm.grpc.engine, so the wire is unchanged) get file names of their own.
VLLM_PROTOCOL = ("common.proto", "vllm_engine.proto")
VLLM_PROTOCOL_PACKAGE = "rag_grpc/vllm_protocol"


def generate_vllm_protocol_stubs() -> None:
    from importlib.resources import files

    source = files("smg_grpc_proto") / "proto"
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / VLLM_PROTOCOL_PACKAGE
        target.mkdir(parents=True)
        for name in VLLM_PROTOCOL:
            text = (source / name).read_text()
            for imported in VLLM_PROTOCOL:
                text = text.replace(f'import "{imported}";', f'import "{VLLM_PROTOCOL_PACKAGE}/{imported}";')
            (target / name).write_text(text)
        _protoc(Path(tmp), [f"{VLLM_PROTOCOL_PACKAGE}/{name}" for name in VLLM_PROTOCOL])


def generate_stubs() -> None:
    proto_dir = ROOT / "protos"
    _protoc(proto_dir, sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto")))
    generate_vllm_protocol_stubs()


class GenerateStubs(Command):
    description = "generate gRPC stubs from protos/"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None: ...

    def finalize_options(self) -> None: ...

    def run(self) -> None:
        generate_stubs()


class BuildPy(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


class Develop(develop):
    def run(self) -> None:
        generate_stubs()
        super().run()


class EggInfo(egg_info):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(
    cmdclass={"build_py": BuildPy, "develop": Develop, "egg_info": EggInfo, "generate_stubs": GenerateStubs}
)

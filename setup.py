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


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    proto_dir = ROOT / "protos"
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
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

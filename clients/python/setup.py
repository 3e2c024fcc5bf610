"""Generates the client's message stubs from the service's proto whenever the package is built or installed.

The same generator as the server's (grpc_tools' protoc and mypy-protobuf's plugin, pinned alike in
pyproject.toml): only the messages (rag_pb2.py and its typed .pyi), because the client builds its calls
from the service descriptors itself. protoc names the module after the proto's path (rag_grpc/v1/rag_pb2),
so it is generated into a temporary directory and moved into rag_grpc_client/_pb. The proto is found in
the repository (../../protos) or, in a copy of this directory on its own, in ./protos.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

ROOT = Path(__file__).resolve().parent
PROTO = Path("rag_grpc") / "v1" / "rag.proto"
OUT = ROOT / "rag_grpc_client" / "_pb"


def _proto_dir() -> Path:
    for candidate in (ROOT / "protos", ROOT.parent.parent / "protos"):
        if (candidate / PROTO).is_file():
            return candidate
    raise RuntimeError(f"{PROTO} not found in ./protos or ../../protos")


def generate_stubs() -> None:
    from grpc_tools import protoc

    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    plugin = shutil.which("protoc-gen-mypy", path=search)
    if plugin is None:
        raise RuntimeError("protoc-gen-mypy not found on PATH; install mypy-protobuf (a build requirement)")
    with tempfile.TemporaryDirectory() as out:
        args = [
            "grpc_tools.protoc",
            f"-I{_proto_dir()}",
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--python_out={out}",
            f"--mypy_out={out}",
            str(PROTO),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {PROTO}")
        for suffix in (".py", ".pyi"):
            shutil.copyfile(Path(out) / PROTO.with_name("rag_pb2" + suffix), OUT / ("rag_pb2" + suffix))


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


setup(cmdclass={"build_py": BuildPy, "develop": Develop, "egg_info": EggInfo})

"""Generates the gRPC stubs from protos/ whenever the package is built or installed.

Stubs are build artefacts (gitignored, never edited by hand). protoc runs in-process through
grpc_tools so that isolated builds use the pinned grpcio-tools, not whatever is on PATH.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

ROOT = Path(__file__).resolve().parent


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
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")


class GenerateStubs(Command):
    description = "generate gRPC stubs from protos/"
    user_options: list = []

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

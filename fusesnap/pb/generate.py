"""Regenerate the protobuf and gRPC modules in fusesnap/pb from protos/fusesnap/pb.

Run as ``python -m fusesnap.pb.generate [--out DIR]`` (or ``make proto``). protoc runs
in-process through grpc_tools, so the output depends only on the pinned grpcio-tools
version and the .proto files. The generated files are committed;
tests/test_proto_generated.py fails when they are out of date.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_PACKAGE_DIR = PROTO_ROOT / "fusesnap" / "pb"
WELL_KNOWN_PROTO_ROOT = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"


def proto_files() -> list[pathlib.Path]:
    """Every .proto file we compile, in a stable order."""
    return sorted(PROTO_PACKAGE_DIR.glob("*.proto"))


def generate(out_root: pathlib.Path) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto below ``out_root``.

    The files land in ``out_root/fusesnap/pb/`` because the proto import paths start
    with ``fusesnap/pb/``.
    """
    protos = proto_files()
    if not protos:
        raise RuntimeError(f"no .proto files found under {PROTO_PACKAGE_DIR}")
    out_root = pathlib.Path(out_root)
    (out_root / "fusesnap" / "pb").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={WELL_KNOWN_PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p) for p in protos),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusesnap.pb.generate",
        description="Generate fusesnap/pb modules from protos/fusesnap/pb/*.proto.",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=REPO_ROOT,
        help="output root; files are written to OUT/fusesnap/pb/ (default: the repository root)",
    )
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

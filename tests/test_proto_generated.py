"""The committed modules in fusesnap/pb must be exactly what protos/ generates."""

from __future__ import annotations

import pathlib

import pytest

from fusesnap.pb import generate as gen

PB_DIR = gen.REPO_ROOT / "fusesnap" / "pb"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
HINT = "generated code in fusesnap/pb is out of date: run `make proto` and commit the result"


def _expected_names() -> list[str]:
    return [p.stem + suffix for p in gen.proto_files() for suffix in GENERATED_SUFFIXES]


def _is_generated_name(name: str) -> bool:
    return name.endswith(GENERATED_SUFFIXES)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out_root = tmp_path_factory.mktemp("proto-out")
    gen.generate(out_root)
    return out_root / "fusesnap" / "pb"


@pytest.mark.parametrize("name", _expected_names())
def test_committed_file_matches_regenerated(name: str, regenerated: pathlib.Path) -> None:
    fresh = regenerated / name
    committed = PB_DIR / name
    assert fresh.is_file(), f"protoc did not produce {name}"
    assert committed.is_file(), f"fusesnap/pb/{name} is missing; {HINT}"
    assert committed.read_bytes() == fresh.read_bytes(), f"fusesnap/pb/{name} differs; {HINT}"


def test_generation_writes_only_expected_files(regenerated: pathlib.Path) -> None:
    produced = sorted(p.name for p in regenerated.iterdir())
    assert produced == sorted(_expected_names())


def test_no_stale_generated_files_committed() -> None:
    stale = sorted(
        p.name
        for p in PB_DIR.iterdir()
        if _is_generated_name(p.name) and p.name not in set(_expected_names())
    )
    assert not stale, f"generated files without a .proto in protos/fusesnap/pb: {stale}; {HINT}"

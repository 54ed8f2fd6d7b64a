"""The shape of the code (README, "How it works"): which part may import
which, read from the source with `ast`, so a wrong arrow fails here.

A *part* is a subpackage of fusesnap (`api`, `snapshots`, …) or a module
at its top (`daemon`, `gc`, `filters`, …).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fusesnap"


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(p for p in rel.parts if p != "__init__"), path


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, wherever the import statement is."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "fusesnap" or len(parts) < 2:
        return None
    if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").exists():
        return parts[1]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules():
        here = _part(module)
        if here is None or here == "pb":  # generated code imports only itself
            continue
        for target in _imports(path):
            there = _part(target)
            if there is not None and there != here:
                graph.setdefault(here, set()).add(there)
    return graph


def test_only_the_fuse_adapter_imports_pyfuse3() -> None:
    users = [m for m, path in _modules()
             if any(i.split(".")[0] == "pyfuse3" for i in _imports(path))]
    assert users and all(m.startswith("fusesnap.layerfs") for m in users), users


def test_no_two_parts_import_each_other() -> None:
    graph = _graph()
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < len(graph) + 1:
                walk(nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles[:5])


def test_the_services_never_import_their_adapters() -> None:
    """cli, api, layerfs and daemon sit above the services; no service or
    store imports them, and the collector is imported by no store."""
    graph = _graph()
    adapters = {"cli", "api", "layerfs", "daemon", "client", "userns"}
    for part in ("snapshots", "content", "leases", "images", "store", "layertar",
                 "distribution", "estargz"):
        assert not graph.get(part, set()) & (adapters | {"gc"}), (part, graph.get(part))


def test_the_client_workflows_use_the_daemon_only_through_grpc() -> None:
    """fusesnap.client runs in the user's process: it may use the stubs (pb),
    the image records' types and the layer format, never a store or the
    daemon's internals, and only the CLI imports it."""
    graph = _graph()
    allowed = {"pb", "images", "layertar", "digests", "labels", "quoting", "errors",
               "distribution", "estargz"}
    assert graph.get("client", set()) <= allowed, graph.get("client")
    users = {part for part, targets in graph.items() if "client" in targets}
    assert users <= {"cli"}, users

"""`fusesnap snapshots …` (placeholder until the client commands land)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    return None

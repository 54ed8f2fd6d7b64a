"""Namespace names (spec §1.3, §1.4).

Leases and images live in a namespace; snapshots and content are shared by
all of them (a proxy backend must not partition by namespace, and direct
clients see one store). Only namespace names are identifier-validated.
"""

from __future__ import annotations

import re

from fusesnap.errors import FailedPrecondition, InvalidArgument
from fusesnap.quoting import quote

MAX_LENGTH = 76
_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")

DEFAULT = "default"
"""The namespace the CLI uses unless told otherwise, as `ctr` does."""


def validate(name: str) -> str:
    """`name` if it is a valid namespace; FailedPrecondition when it is missing
    ("namespace is required"), InvalidArgument when it is malformed."""
    if not name:
        raise FailedPrecondition("namespace is required")
    if len(name) > MAX_LENGTH:
        raise InvalidArgument(f"identifier {quote(name[:MAX_LENGTH])}… greater than maximum "
                              f"length ({MAX_LENGTH} characters)")
    if not _IDENTIFIER.fullmatch(name):
        raise InvalidArgument(f"identifier {quote(name)} must match "
                              f"{_IDENTIFIER.pattern}")
    return name

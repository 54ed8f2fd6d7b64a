"""Content digests, ``<algorithm>:<hex>``, validated as go-digest does (spec §3.2).

A :class:`Digest` only comes out of :func:`parse`, so code holding one may use
its parts as path components: the algorithm is one of :data:`ALGORITHMS` and
the encoded part is lower-case hex of that algorithm's length.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from fusesnap.errors import InvalidArgument
from fusesnap.quoting import quote

__all__ = ["ALGORITHMS", "CANONICAL", "EMPTY", "Digest", "parse", "sha256_of"]

ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}
"""The supported algorithms and the length of their hex encoding."""

CANONICAL = "sha256"
"""The algorithm new content is hashed with."""

# go-digest's DigestRegexp: what a digest of an algorithm we do not know must
# look like to be "unsupported" rather than malformed.
_WELL_FORMED = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_LOWER_HEX = re.compile(r"[0-9a-f]+")


class Digest(NamedTuple):
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


def parse(text: str) -> Digest:
    """Validate `text` and split it; InvalidArgument says why it is not a digest.

    The reasons are go-digest's: "invalid checksum digest format" (no ``:``
    with something on both sides, non-hex or upper-case hex, or an unknown
    algorithm in a malformed value), "unsupported digest algorithm" (an
    unknown but well-formed algorithm) and "invalid checksum digest length".
    """
    algorithm, sep, encoded = text.partition(":")
    if not sep or not algorithm or not encoded:
        raise _invalid(text, "invalid checksum digest format")
    length = ALGORITHMS.get(algorithm)
    if length is None:
        if _WELL_FORMED.fullmatch(text):
            raise _invalid(text, "unsupported digest algorithm")
        raise _invalid(text, "invalid checksum digest format")
    if len(encoded.encode()) != length:  # bytes, as Go counts
        raise _invalid(text, "invalid checksum digest length")
    if not _LOWER_HEX.fullmatch(encoded):
        raise _invalid(text, "invalid checksum digest format")
    return Digest(algorithm, encoded)


def _invalid(text: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"digest {quote(text)}: {reason}")


def sha256_of(data: bytes) -> str:
    """The canonical digest string of `data`."""
    return f"{CANONICAL}:{hashlib.sha256(data).hexdigest()}"


EMPTY = sha256_of(b"")
"""The digest of no bytes (what a STAT of an empty ingest reports)."""

"""Label maps: size limits (spec §1.4) and field-mask updates (spec §7.2).

Labels are plain ``str -> str`` maps. An empty value is never stored: writing
"" for a key deletes it. Every stored pair must fit in
:data:`MAX_LABEL_SIZE` bytes (key plus value, UTF-8 encoded).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from fusesnap.errors import InvalidArgument
from fusesnap.quoting import quote

__all__ = ["MAX_LABEL_SIZE", "apply_mask", "clean", "validate"]

MAX_LABEL_SIZE = 4096
"""Largest allowed ``len(key) + len(value)`` of one label, in UTF-8 bytes."""

# containerd's remote-snapshot Prepare (spec §2.5), as CRI sends it for a layer.
SNAPSHOT_REF = "containerd.io/snapshot.ref"
"""The chain ID the Prepare's layer is to be committed as."""
CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
REMOTE_INGEST = "remote-layer-"
"""The content ingest a lazy layer's background download writes is this and
the layer's digest (clients read its progress with Content.Status)."""

_LABELS = "labels"
_LABEL_PREFIX = "labels."


def _utf8_size(text: str) -> int:
    # surrogatepass keeps this total (never raises) for odd Python strings.
    return len(text.encode("utf-8", errors="surrogatepass"))


def validate(labels: Mapping[str, str]) -> None:
    """Raise InvalidArgument if any pair's key plus value exceeds 4096 UTF-8 bytes.

    The message names the first 10 characters of the offending key.
    """
    for key, value in labels.items():
        if _utf8_size(key) + _utf8_size(value) > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), "
                f"key: {key[:10]}"
            )


def clean(labels: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of `labels` without the pairs whose value is ""."""
    return {key: value for key, value in labels.items() if value != ""}


def _is_extra(path: str, extra_paths: Collection[str]) -> bool:
    if path in extra_paths:
        return True
    return any(extra.endswith(".") and path.startswith(extra) for extra in extra_paths)


def apply_mask(
    current: Mapping[str, str],
    requested: Mapping[str, str],
    paths: Sequence[str],
    *,
    what: str,
    name: str,
    extra_paths: Collection[str] = (),
) -> dict[str, str]:
    """Apply an Update RPC's field mask to a label map and return the new map.

    With no `paths` the result is `requested`. Otherwise paths apply in
    order: ``labels`` replaces the whole map with `requested`, and
    ``labels.<key>`` (key taken verbatim) sets the key to
    ``requested.get(key, "")``, where "" deletes it. Paths in `extra_paths`
    are skipped for the caller to handle (an entry ending in "." accepts
    every path starting with it, e.g. ``"annotations."``). Any other path
    raises InvalidArgument("cannot update <path> field on <what> <name>").
    The result never holds "" values and is checked with :func:`validate`.
    Neither input mapping is modified.
    """
    if not paths:
        result = clean(requested)
    else:
        result = clean(current)
        for path in paths:
            if path == _LABELS:
                result = clean(requested)
            elif path.startswith(_LABEL_PREFIX):
                key = path[len(_LABEL_PREFIX) :]
                value = requested.get(key, "")
                if value:
                    result[key] = value
                else:
                    result.pop(key, None)
            elif not _is_extra(path, extra_paths):
                raise InvalidArgument(f"cannot update {quote(path)} field on {what} {quote(name)}")
    validate(result)
    return result

"""Process-wide allocator tuning for megabyte-sized buffers (glibc only).

Every chunk of a content Read or Write allocates several buffers of about
1 MiB (the encoded message, protobuf's encode buffer and serialized bytes
for a Write, gRPC's slices) and frees them before the next chunk. By default glibc maps such
sizes freshly with mmap, or trims the freed heap top back to the kernel (its
trim threshold only follows the mmap threshold up to twice the largest
chunk), so each chunk's buffers fault in anew: 250-500 page faults per MiB,
which were most of the daemon's CPU time in a 1 GiB Read (measured with
py-spy and perf; see bench/content.py). :func:`reuse_megabyte_buffers` makes
allocations below 8 MiB come from the heap and keeps up to 32 MiB of free
heap top per malloc arena for the next chunk.
"""

from __future__ import annotations

import ctypes

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_megabyte_buffers() -> bool:
    """Tune the allocator as the module says; False where mallopt is missing
    (not glibc), which changes nothing."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt(_M_MMAP_THRESHOLD, 8 << 20)
    mallopt(_M_TRIM_THRESHOLD, 32 << 20)
    return True

"""Go's ``strconv.Quote``: how containerd quotes names and values in its error
messages (``%q``), and how the filter language (filters.py) quotes a field
or a value. Error messages here quote the same way, so a client sees the
same text from fusesnap as from containerd."""

from __future__ import annotations

import unicodedata

_QUOTE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def is_graphic(ch: str) -> bool:
    # Letters, marks, numbers, punctuation and symbols.
    return unicodedata.category(ch)[0] in "LMNPS"


def is_surrogate(ch: str) -> bool:
    return 0xD800 <= ord(ch) <= 0xDFFF


def quote(value: str) -> str:
    """Return `value` as a double-quoted literal, like Go's ``strconv.Quote``.

    The result is accepted anywhere the filter language takes a quoted field
    or value, and parses back to `value` (for any string without unpaired
    surrogates). It is also the rendering of Go's ``%q`` in error messages.
    """
    out = ['"']
    for ch in value:
        escaped = _QUOTE_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
            continue
        if ch == " " or (not is_surrogate(ch) and is_graphic(ch)):
            out.append(ch)
            continue
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            # A byte smuggled through errors="surrogateescape".
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------
# Parser

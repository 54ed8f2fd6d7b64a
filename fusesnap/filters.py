"""containerd's filter language (spec §7.1).

A request's ``filters`` list is an OR of filters; each filter is a
comma-separated AND of selectors ``fieldpath [op value]``. The accepted
syntax, including its whitespace and quoting corner cases, follows the
containerd 1.6 parser; parse errors are reported as
:class:`fusesnap.errors.InvalidArgument` with containerd's message layout::

    filters: parse error: [<before> >|<char>|< <after>]: <problem>

Matching is done against an *adaptor*: a callable that maps a field path
(a tuple of path components) to the field's value, or ``None`` when the
object has no such field. :func:`object_adaptor` builds one for the usual
"plain fields + labels (+ annotations)" object shape.

``~=`` values are RE2 regular expressions, as in containerd (Go's regexp is
RE2): matching takes time linear in the value's length whatever the pattern,
and patterns RE2 rejects (backreferences, lookarounds) are InvalidArgument.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import re2

from fusesnap.errors import InvalidArgument
from fusesnap.quoting import is_graphic, is_surrogate, quote

__all__ = [
    "Adaptor",
    "Filter",
    "Operator",
    "Regex",
    "Selector",
    "object_adaptor",
    "parse",
    "quote",
]

Adaptor = Callable[[tuple[str, ...]], str | None]
"""Maps a field path to the field's value, or ``None`` if the field is absent."""


class Operator(enum.Enum):
    """A selector's comparison; ``PRESENT`` is the operator-less form."""

    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


_OPERATORS = {op.value: op for op in Operator if op is not Operator.PRESENT}


class Regex(Protocol):
    """A compiled ``~=`` pattern, searched over UTF-8 bytes."""

    def search(self, text: bytes) -> object | None:
        """Return a match object if the pattern occurs anywhere in `text`, else None."""
        ...


def _regex_options() -> re2.Options:
    options = re2.Options()
    # A client's bad pattern is its error, reported to it; RE2 would also
    # write it to stderr.
    options.log_errors = False
    return options


_REGEX_OPTIONS = _regex_options()


def _utf8(text: str) -> bytes:
    # Values decoded from non-UTF-8 escapes carry their bytes as lone
    # surrogates (see _Parser.unquote); give RE2 those bytes back, so a
    # pattern holding them is refused as invalid UTF-8, as Go refuses it.
    return text.encode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class Selector:
    """One ``fieldpath [op value]`` term of a filter."""

    fieldpath: tuple[str, ...]
    operator: Operator
    value: str = ""
    # Compiled from `value` (for ``~=`` only), so it adds nothing to equality.
    regex: Regex | None = field(default=None, compare=False)

    def match(self, adaptor: Adaptor) -> bool:
        """Report whether the object behind `adaptor` satisfies this selector.

        An absent field is never present or equal, and counts as "" for
        ``!=`` and ``~=``.
        """
        found = adaptor(self.fieldpath)
        if self.operator is Operator.PRESENT:
            return found is not None
        if self.operator is Operator.EQUAL:
            return found is not None and found == self.value
        actual = "" if found is None else found
        if self.operator is Operator.NOT_EQUAL:
            return actual != self.value
        assert self.regex is not None
        return self.regex.search(_utf8(actual)) is not None


@dataclass(frozen=True)
class Filter:
    """A parsed filter list: OR over ``alternatives``, each an AND of selectors.

    An empty alternative (from an empty filter string, or from an empty
    filter list) matches every object.
    """

    alternatives: tuple[tuple[Selector, ...], ...]

    @property
    def matches_everything(self) -> bool:
        """True when some alternative has no selectors, so every object matches."""
        return any(not selectors for selectors in self.alternatives)

    def match(self, adaptor: Adaptor) -> bool:
        """Report whether any alternative has all of its selectors satisfied."""
        return any(
            all(selector.match(adaptor) for selector in selectors)
            for selectors in self.alternatives
        )


def parse(filters: Sequence[str]) -> Filter:
    """Parse a request's ``filters`` list into a :class:`Filter`.

    No filters, or any empty filter string, match everything. A syntax error
    (or an invalid ``~=`` regular expression) raises InvalidArgument naming
    the offending filter and position.
    """
    if isinstance(filters, str):
        raise TypeError("parse() takes a sequence of filter strings, not a single string")
    if not filters:
        return Filter(((),))
    return Filter(tuple(_Parser(text).filter() for text in filters))


def object_adaptor(
    fields: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Adaptor:
    """Build an adaptor for an object with plain fields, labels and annotations.

    `fields` maps dotted paths ("name", "target.digest") to values; a path is
    present exactly when it is a key of `fields`. A ``labels.<k>...`` path
    looks up the remaining components joined with "." in `labels` (likewise
    ``annotations``); it is absent when the key is missing, when no key is
    given, or when the map is None or empty. Any other path is absent.
    """
    table = {tuple(path.split(".")): value for path, value in fields.items()}
    maps = {"labels": labels, "annotations": annotations}

    def adapt(fieldpath: tuple[str, ...]) -> str | None:
        path = tuple(fieldpath)
        if not path:
            return None
        if path[0] in maps:
            mapping = maps[path[0]]
            if not mapping or len(path) < 2:
                return None
            return mapping.get(".".join(path[1:]))
        return table.get(path)

    return adapt


# --------------------------------------------------------------------------
# Go-compatible character classes and string quoting


# Go's unicode.IsSpace: the Latin-1 spaces plus the Unicode White_Space
# characters above U+00FF.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)

_FIELD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_QUOTE_CHARS = frozenset('"/|')
_SEPARATOR_CHARS = frozenset(",.")
_OPERATOR_CHARS = frozenset("=!~")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")

_SIMPLE_ESCAPES = {
    "a": 0x07,
    "b": 0x08,
    "f": 0x0C,
    "n": 0x0A,
    "r": 0x0D,
    "t": 0x09,
    "v": 0x0B,
    "\\": 0x5C,
}
_NUMERIC_ESCAPE_WIDTH = {"x": 2, "u": 4, "U": 8}



def _is_value_char(ch: str) -> bool:
    return ch != "," and ch not in _GO_SPACE and is_graphic(ch)



class _Tok(enum.Enum):
    EOF = "EOF"
    QUOTED = "quoted"
    SEPARATOR = "separator"
    OPERATOR = "operator"
    VALUE = "value"
    FIELD = "field"
    OTHER = "other"


class _Parser:
    """Recursive-descent parser for one filter string.

    Whitespace is skipped only where a token is *expected* (start of a
    field, operator or value), never where the parser merely looks at the
    next character to decide between ``,``, ``.``, an operator or the end.
    That single rule yields containerd's behaviour: ``name == foo`` and
    ``a==b, c`` are fine, ``name==foo `` and ``labels.foo ,x`` are not.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- errors ------------------------------------------------------------

    def error(self, pos: int, problem: str) -> InvalidArgument:
        text = self.text
        if pos < len(text):
            where = f"[{text[:pos]} >|{text[pos]}|< {text[pos + 1 :]}]"
        else:
            where = f"[{text}]"
        return InvalidArgument(f"filters: parse error: {where}: {problem}")

    # -- grammar -----------------------------------------------------------

    def filter(self) -> tuple[Selector, ...]:
        if self.text == "":
            return ()
        selectors = [self.selector()]
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.check_char(self.pos)
            if ch != ",":
                raise self.error(self.pos, f"unexpected input: {ch}")
            self.pos += 1
            selectors.append(self.selector())
        return tuple(selectors)

    def selector(self) -> Selector:
        fieldpath = self.fieldpath()
        if self.pos >= len(self.text) or self.text[self.pos] == ",":
            return Selector(fieldpath, Operator.PRESENT)
        operator = self.operator()
        value_pos, value = self.value(alt_quotes=operator is Operator.MATCHES)
        regex = None
        if operator is Operator.MATCHES:
            try:
                regex = re2.compile(_utf8(value), _REGEX_OPTIONS)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else exc
                if isinstance(reason, bytes):
                    # RE2's reason quotes the offending part of the pattern,
                    # which need not be UTF-8.
                    reason = reason.decode("utf-8", errors="replace")
                raise self.error(
                    value_pos, f"invalid regular expression {quote(value)}: {reason}"
                ) from None
        return Selector(fieldpath, operator, value, regex)

    def fieldpath(self) -> tuple[str, ...]:
        components = [self.field()]
        while self.pos < len(self.text) and self.text[self.pos] == ".":
            self.pos += 1
            components.append(self.field())
        return tuple(components)

    def field(self) -> str:
        kind, start, end = self.token(value_mode=False)
        if kind is _Tok.FIELD:
            return self.text[start:end]
        if kind is _Tok.QUOTED:
            return self.unquote(start, end, alt_quotes=False)
        raise self.error(start, "expected field or quoted")

    def operator(self) -> Operator:
        kind, start, end = self.token(value_mode=False)
        if kind is not _Tok.OPERATOR:
            raise self.error(start, 'expected an operator ("=="|"!="|"~=")')
        spelled = self.text[start:end]
        operator = _OPERATORS.get(spelled)
        if operator is None:
            raise self.error(start, f"unsupported operator {quote(spelled)}")
        return operator

    def value(self, *, alt_quotes: bool) -> tuple[int, str]:
        kind, start, end = self.token(value_mode=True)
        if kind in (_Tok.VALUE, _Tok.FIELD):
            return start, self.text[start:end]
        if kind is _Tok.QUOTED:
            return start, self.unquote(start, end, alt_quotes=alt_quotes)
        raise self.error(start, "expected value or quoted")

    # -- lexing ------------------------------------------------------------

    def token(self, *, value_mode: bool) -> tuple[_Tok, int, int]:
        """Skip whitespace, consume one token, return (kind, start, end)."""
        text, n = self.text, len(self.text)
        pos = self.pos
        while pos < n and text[pos] in _GO_SPACE:
            pos += 1
        if pos >= n:
            self.pos = n
            return _Tok.EOF, n, n
        ch = text[pos]
        self.check_char(pos)
        if ch in _QUOTE_CHARS:
            kind, end = _Tok.QUOTED, self.scan_quoted(pos)
        elif ch in _SEPARATOR_CHARS:
            kind, end = _Tok.SEPARATOR, pos + 1
        elif ch in _OPERATOR_CHARS:
            end = pos + 1
            while end < n and text[end] in _OPERATOR_CHARS:
                end += 1
            kind = _Tok.OPERATOR
        elif value_mode:
            # The first character is taken as is; the rest must be printable,
            # non-space and not a comma.
            end = pos + 1
            while end < n and _is_value_char(text[end]):
                end += 1
            kind = _Tok.VALUE
        elif ch in _FIELD_CHARS:
            end = pos + 1
            while end < n and text[end] in _FIELD_CHARS:
                end += 1
            kind = _Tok.FIELD
        else:
            kind, end = _Tok.OTHER, pos + 1
        self.pos = end
        return kind, pos, end

    def check_char(self, pos: int) -> None:
        ch = self.text[pos]
        if ch == "\0":
            raise self.error(pos, "unexpected null")
        if is_surrogate(ch):
            raise self.error(pos, "rune error")

    def scan_quoted(self, start: int) -> int:
        """Find the end (exclusive) of the quoted literal opening at `start`.

        Only the escape syntax is checked here; the first problem found is
        reported, at the opening quote.
        """
        text, n = self.text, len(self.text)
        quote_char = text[start]
        problem: str | None = None
        pos = start + 1
        while True:
            if pos >= n or text[pos] == "\n" or text[pos] == "\0":
                if pos < n and text[pos] == "\0":
                    problem = problem or "unexpected null"
                raise self.error(start, problem or "quoted literal not terminated")
            ch = text[pos]
            if is_surrogate(ch):
                problem = problem or "rune error"
            if ch == quote_char:
                break
            if ch != "\\":
                pos += 1
                continue
            pos += 1
            escaped = text[pos] if pos < n else ""
            if escaped and (escaped in _SIMPLE_ESCAPES or escaped == quote_char):
                pos += 1
                continue
            if escaped and escaped in _OCTAL_DIGITS:
                digits, width = _OCTAL_DIGITS, 3
            elif escaped and escaped in _NUMERIC_ESCAPE_WIDTH:
                pos += 1
                digits, width = _HEX_DIGITS, _NUMERIC_ESCAPE_WIDTH[escaped]
            else:
                if escaped == "\0":
                    problem = problem or "unexpected null"
                problem = problem or "illegal escape sequence"
                continue  # re-examine the escaped character as ordinary text
            while width and pos < n and text[pos] in digits:
                pos += 1
                width -= 1
            if width:
                problem = problem or "illegal numeric escape sequence"
        if problem is not None:
            raise self.error(start, problem)
        return pos + 1

    def unquote(self, start: int, end: int, *, alt_quotes: bool) -> str:
        """Decode the (already scanned) quoted literal text[start:end]."""
        quote_char = self.text[start]
        if quote_char != '"' and not alt_quotes:
            raise self.error(start, "invalid quote encountered")
        body = self.text[start + 1 : end - 1]
        out = bytearray()
        i, n = 0, len(body)
        while i < n:
            ch = body[i]
            if ch != "\\":
                out += ch.encode()
                i += 1
                continue
            escaped = body[i + 1]
            i += 2
            if escaped == quote_char:
                out += escaped.encode()
            elif escaped in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[escaped])
            elif escaped in _OCTAL_DIGITS:
                code = int(body[i - 1 : i + 2], 8)
                i += 2
                if code > 0xFF:
                    raise self.error(start, "unquoting failed: quote syntax error")
                out.append(code)
            else:
                width = _NUMERIC_ESCAPE_WIDTH[escaped]
                code = int(body[i : i + width], 16)
                i += width
                if escaped == "x":
                    out.append(code)
                elif code > 0x10FFFF:
                    raise self.error(start, "unquoting failed: quote syntax error")
                elif 0xD800 <= code <= 0xDFFF:
                    out += "\ufffd".encode()  # Go encodes surrogate code points as U+FFFD
                else:
                    out += chr(code).encode()
        # \x and octal escapes can produce bytes that are not UTF-8; keep them
        # as lone surrogates so they never equal a real (valid UTF-8) value.
        return out.decode("utf-8", errors="surrogateescape")

"""S-expressions exactly as xend reads and writes them (protocol.md 12.2-12.4).

Values are ``str`` (atoms and quoted strings alike: no number conversion,
so ``0097`` stays ``"0097"``) and ``list``.  ``FormScanner`` tells, from the
bytes read so far, where the first complete expression ends: the control
socket answers once it knows (design.md 6).

Why a tokenizer of our own instead of sexpdata: sexpdata's parser converts
atoms (``0097`` -> 97, ``t`` -> True, ``nil`` -> []), reads ``'`` as the
Lisp quote instead of a string delimiter, uses ``;`` comments and raises
bare AssertionErrors on some inputs (design.md 11).  Vnet ids and config
values must keep their exact text, so the reader below follows xend's
character classes; sexpdata serves as a differential oracle in the tests
on the subset where both grammars agree.

Deviations from xend, all towards failing loudly: end of input inside a
list is always ``unexpected EOF`` (xend silently returned nothing when the
input ended inside a comment), a one-digit ``\\x`` escape followed by a
non-hex character is accepted (xend crashed with NameError), and an empty
string prints as ``''`` (xend printed nothing, which did not read back),
and lists nested deeper than MAX_DEPTH are a ParseError (untrusted input
must not exhaust the recursive printers).
"""

from __future__ import annotations

import re
import string
from typing import List, Optional, Union

Sxpr = Union[str, List["Sxpr"]]

_SPACE = " \t\n\v\f\r"
_SEPARATORS = "{}()<>[]!;"
_QUOTES = "\"'"
_PRINTABLE = frozenset(string.printable)
_ESCAPES = {
    "a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v",
    "f": "\f", "r": "\r", "\\": "\\", "'": "'", '"': '"',
}
_HEX = "0123456789abcdefABCDEF"
_OCT = "01234567"
_EOT = "\x04"  # ctrl-D ends the input, as in xend
MAX_DEPTH = 100  # deeper nesting is refused: no config or command needs it


class ParseError(ValueError):
    """Input that is not a valid xend s-expression."""

    def __init__(self, message: str, line: int = 0, column: int = 0):
        self.message = message
        self.line = line
        self.column = column
        where = f" (line {line}, column {column})" if line else ""
        super().__init__(f"{message}{where}")


class _Reader:
    """Single pass over the text; positions are kept for error messages."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: Optional[int] = None) -> ParseError:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return ParseError(message, line, column)

    def read_all(self) -> List[Sxpr]:
        forms: List[Sxpr] = []
        stack: List[List[Sxpr]] = []
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in _SPACE:
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            elif c == "(":
                if len(stack) >= MAX_DEPTH:
                    raise self.error(f"nested deeper than {MAX_DEPTH} lists")
                stack.append([])
                self.pos += 1
            elif c == ")":
                if not stack:
                    raise self.error("syntax error: )")
                done = stack.pop()
                (stack[-1] if stack else forms).append(done)
                self.pos += 1
            elif c == _EOT:
                break
            else:
                if c in _QUOTES:
                    value = self._string(c)
                elif c in _PRINTABLE:
                    value = self._atom()
                else:
                    raise self.error(f"invalid character: code {ord(c)}")
                (stack[-1] if stack else forms).append(value)
        if stack:
            raise self.error("unexpected EOF")
        return forms

    def _atom(self) -> str:
        # The first character may itself be a separator such as '[' (xend:
        # 'a[b]c' reads as 'a', '[b', ']c'); quotes inside an atom are kept.
        text, n, start = self.text, len(self.text), self.pos
        i = start + 1
        while i < n:
            c = text[i]
            if c in _SEPARATORS or c in _SPACE or c == "#":
                break
            i += 1
        self.pos = i
        return text[start:i]

    def _string(self, delim: str) -> str:
        text, n = self.text, len(self.text)
        start = self.pos
        i = start + 1
        out: List[str] = []
        while True:
            if i >= n:
                raise self.error("unexpected EOF", start)
            c = text[i]
            if c == delim:
                self.pos = i + 1
                return "".join(out)
            if c != "\\":
                out.append(c)
                i += 1
                continue
            i += 1
            if i >= n:
                raise self.error("unexpected EOF", start)
            e = text[i]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 1
            elif e == "x":
                j = i + 1
                while j < n and j < i + 3 and text[j] in _HEX:
                    j += 1
                if j == i + 1:
                    raise self.error("invalid hex escape: no digits", i)
                out.append(chr(int(text[i + 1:j], 16)))
                i = j
            elif e in _OCT:
                j = i
                while j < n and j < i + 3 and text[j] in _OCT:
                    j += 1
                value = int(text[i:j], 8)
                if value > 0xFF:
                    raise self.error(
                        f"invalid octal escape: out of range {text[i:j]}", i)
                out.append(chr(value))
                i = j
            else:
                # xend quirk: an unknown escape keeps the backslash and
                # drops the character after it.
                out.append("\\")
                i += 1


def parse_all(text: str) -> List[Sxpr]:
    """Every top-level form in ``text`` (an empty list if there is none)."""
    if not isinstance(text, str):
        raise TypeError(f"sxp text must be str, not {type(text).__name__}")
    return _Reader(text).read_all()


def parse_one(text: str) -> Sxpr:
    """Exactly one top-level form, else a ParseError saying what was found."""
    forms = parse_all(text)
    if not forms:
        raise ParseError("no s-expression found (empty input or only comments)")
    if len(forms) > 1:
        raise ParseError(f"expected one s-expression, found {len(forms)}")
    return forms[0]



# -- framing: where the first expression ends (design.md 6) -------------------

_TOKEN, _ATOM, _STRING, _COMMENT, _STOP = range(5)
_SPACE_RUN = re.compile(rb"[ \t\n\v\f\r]*")
_ATOM_RUN = re.compile(rb"[^{}()<>\[\]!; \t\n\v\f\r#]*")
_STRING_RUN = {ord('"'): re.compile(rb'[^"\\]*'), ord("'"): re.compile(rb"[^'\\]*")}
_PRINTABLE_BYTES = frozenset(string.printable.encode("ascii"))


class FormScanner:
    """Where the first complete top-level expression ends, in bytes that arrive
    in pieces, read as ``parse_all`` reads the text they decode to (every
    syntax character is ASCII).  Never raises.

    ``end`` is the offset just after that expression once it is known: a list
    at its closing ``)``, a string at its closing quote, an atom at the
    delimiter after it (an atom at the end of the bytes so far may still
    grow).  Where the reader is bound to fail (a stray ``)``, an invalid
    character, lists nested past MAX_DEPTH) or stops (ctrl-D), ``end`` is set
    at once and scanning stops.  ``more`` turns true when anything but
    whitespace and comments follows a complete expression: a second one."""

    def __init__(self) -> None:
        self.end: Optional[int] = None
        self.more = False
        self._fed = 0
        self._depth = 0
        self._state = _TOKEN
        self._quote = 0         # the delimiter of the open string
        self._escape = False    # the open string's last byte was a backslash

    def feed(self, data: bytes) -> None:
        base, n, i = self._fed, len(data), 0
        self._fed += n
        while i < n and self._state != _STOP:
            if self._state == _TOKEN:
                i = self._token(data, i, base)
            elif self._state == _ATOM:
                i = _ATOM_RUN.match(data, i).end()
                if i < n:                   # the delimiter is read as the next token
                    self._state = _TOKEN
                    self._value(base + i)
            elif self._state == _STRING:
                i = self._string(data, i, base)
            else:
                j = data.find(b"\n", i)
                i = n if j < 0 else j + 1
                if j >= 0:
                    self._state = _TOKEN

    def _string(self, data: bytes, i: int, base: int) -> int:
        if self._escape:                    # the escaped character, whatever it is
            self._escape = False
            return i + 1
        i = _STRING_RUN[self._quote].match(data, i).end()
        if i == len(data):
            return i
        if data[i] == self._quote:
            self._state = _TOKEN
            self._value(base + i + 1)
        else:
            self._escape = True
        return i + 1

    def _token(self, data: bytes, i: int, base: int) -> int:
        i = _SPACE_RUN.match(data, i).end()
        if i == len(data):
            return i
        c = data[i]
        if c == 0x23:                       # '#': a comment to the end of the line
            self._state = _COMMENT
        elif self.end is not None:          # after the first expression
            self.more = c != 0x04
            self._state = _STOP
        elif c == 0x28:                     # '('
            self._depth += 1
            if self._depth > MAX_DEPTH:
                self._stop(base + i + 1)
        elif c == 0x29:                     # ')'
            if self._depth == 0:
                self._stop(base + i + 1)
            else:
                self._depth -= 1
                self._value(base + i + 1)
        elif c in _STRING_RUN:
            self._state, self._quote = _STRING, c
        elif c in _PRINTABLE_BYTES:
            self._state = _ATOM
        else:                               # ctrl-D ends the input; others are invalid
            self._stop(base + i + 1)
        return i + 1

    def _value(self, end: int) -> None:
        if self._depth == 0 and self.end is None:
            self.end = end

    def _stop(self, end: int) -> None:
        if self.end is None:
            self.end = end
        self._state = _STOP


# -- printing ---------------------------------------------------------------

_BARE = frozenset(string.ascii_letters + string.digits + ".-_:/~")


def is_bare(atom: str) -> bool:
    """True when xend's ``sxp.show`` prints the string without quotes."""
    return atom == "@" or (atom != "" and all(c in _BARE for c in atom))


def quote(atom: str) -> str:
    """Python-repr style quoting, as xend's show; reads back to ``atom``."""
    delim = '"' if ("'" in atom and '"' not in atom) else "'"
    out = [delim]
    for c in atom:
        if c == "\\" or c == delim:
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or 0x7F <= ord(c) <= 0xA0:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append(delim)
    return "".join(out)


def to_string(sxpr: Sxpr) -> str:
    """One line, xend's ``sxp.to_string``: ``(vnet (id 97) (extra 'a b'))``."""
    if isinstance(sxpr, (list, tuple)):
        return "(" + " ".join(to_string(x) for x in sxpr) + ")"
    if isinstance(sxpr, bool):
        raise TypeError("booleans have no s-expression form")
    if isinstance(sxpr, (int, float)):
        return str(sxpr)
    if not isinstance(sxpr, str):
        raise TypeError(f"cannot print {type(sxpr).__name__} as an s-expression")
    return sxpr if is_bare(sxpr) else quote(sxpr)


def pretty(sxpr: Sxpr, width: int = 80) -> str:
    """xend's PrettyPrint.prettyprintstring: a list that fits in what is left
    of the line goes on one line; otherwise its elements go one per line,
    indented 4 from its '(' and the ')' on a line of its own at that
    column.  A newline is always appended."""
    out: List[str] = []
    _pretty(sxpr, 0, width, out)
    out.append("\n")
    return "".join(out)


def _pretty(sxpr: Sxpr, column: int, width: int, out: List[str]) -> int:
    inline = to_string(sxpr)
    if not isinstance(sxpr, (list, tuple)) or width - column >= len(inline):
        out.append(inline)
        return column + len(inline)
    out.append("(")
    col = column + 1
    for i, element in enumerate(sxpr):
        if i:
            out.append("\n" + " " * (column + 4))
            col = column + 4
        col = _pretty(element, col, width, out)
    out.append("\n" + " " * column + ")")
    return column + 1


# -- accessors (xend's child/child_value semantics) ----------------------------

def children(sxpr: Sxpr) -> List[Sxpr]:
    """Elements after the head, skipping an ``(@ ...)`` attribute list."""
    if not isinstance(sxpr, list) or len(sxpr) < 2:
        return []
    rest = sxpr[1:]
    if isinstance(rest[0], list) and rest[0][:1] == ["@"]:
        rest = rest[1:]
    return rest


def child(sxpr: Sxpr, name: str) -> Optional[List[Sxpr]]:
    """The first child list whose head is ``name`` (the first duplicate wins)."""
    for x in children(sxpr):
        if isinstance(x, list) and x and x[0] == name:
            return x
    return None


def child_value(sxpr: Sxpr, name: str, default=None):
    """First value of the first ``(name value ...)`` child; ``(name)`` is missing."""
    found = child(sxpr, name)
    if found is None or len(found) < 2:
        return default
    return found[1]

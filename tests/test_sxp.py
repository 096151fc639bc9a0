"""xend s-expressions: the quirks of protocol.md 12.2-12.4, round trips, fuzzing."""

import re

import pytest
import sexpdata
from hypothesis import given, settings
from hypothesis import strategies as st

from xend_vnet import sxp
from xend_vnet.sxp import ParseError

# -- reader quirks (protocol.md 12.2) ----------------------------------------

def test_atoms_keep_exact_text():
    assert sxp.parse_one("(vnet (id 0097) (x 1e3) (t t) (n nil))") == [
        "vnet", ["id", "0097"], ["x", "1e3"], ["t", "t"], ["n", "nil"]]


def test_quoted_and_bare_are_the_same_value():
    assert sxp.parse_one('(id "97")') == sxp.parse_one("(id 97)") == ["id", "97"]


def test_hash_comment_lines_and_trailing():
    text = "# vnet 97\n(vnet (id 97) # the id\n (bridge vnet97))\n# end"
    assert sxp.parse_one(text) == ["vnet", ["id", "97"], ["bridge", "vnet97"]]


def test_hash_inside_atom_starts_a_comment():
    assert sxp.parse_all("(a b#c d)\n)") == [["a", "b"]]
    # xend's (id 9#7)) swallows the closers; we say so instead of returning None.
    with pytest.raises(ParseError, match="unexpected EOF"):
        sxp.parse_all("(id 9#7))")


def test_semicolon_is_not_a_comment_and_separators_start_atoms():
    assert sxp.parse_one("(a;b)") == ["a", ";b"]
    assert sxp.parse_one("(a[b]c)") == ["a", "[b", "]c"]
    assert sxp.parse_one("(x{y}<z>!w)") == ["x", "{y", "}", "<z", ">", "!w"]


@pytest.mark.parametrize("text, value", [
    (r'"a\tb"', "a\tb"),
    (r"'a\nb'", "a\nb"),
    (r'"\a\b\v\f\r"', "\a\b\v\f\r"),
    (r'"q\"q"', 'q"q'),
    (r"'it\'s'", "it's"),
    (r'"back\\slash"', "back\\slash"),
    (r'"\x41\x4a"', "AJ"),
    (r'"\x4"', "\x04"),
    (r'"\101\7"', "A\x07"),
    (r'"\q"', "\\"),           # unknown escape: keep the backslash, drop the char
    ("'a b'", "a b"),
    ("\"it's\"", "it's"),
])
def test_string_escapes(text, value):
    assert sxp.parse_one(f"(k {text})") == ["k", value]


def test_quote_characters_inside_an_atom_are_kept():
    assert sxp.parse_one("(a b'c)") == ["a", "b'c"]


@pytest.mark.parametrize("text, message", [
    (")", "syntax error: )"),
    ("(a (b)", "unexpected EOF"),
    ("(a 'unterminated)", "unexpected EOF"),
    ('(a "x\\', "unexpected EOF"),
    ("(a \x01)", "invalid character: code 1"),
    ("(a \u00e9)", "invalid character: code 233"),
    ('(a "\\x")', "invalid hex escape"),
    ('(a "\\777")', "invalid octal escape"),
])
def test_parse_errors(text, message):
    with pytest.raises(ParseError, match=re.escape(message)):
        sxp.parse_all(text)


def test_parse_error_has_position():
    with pytest.raises(ParseError) as info:
        sxp.parse_all("(a)\n  )")
    assert (info.value.line, info.value.column) == (2, 3)


def test_ctrl_d_ends_input():
    assert sxp.parse_all("(a)\x04(b") == [["a"]]


def test_parse_one_counts_forms():
    with pytest.raises(ParseError, match="no s-expression"):
        sxp.parse_one("# only a comment\n")
    with pytest.raises(ParseError, match="found 2"):
        sxp.parse_one("(a) (b)")
    assert sxp.parse_all("") == []


def test_parse_all_refuses_bytes():
    with pytest.raises(TypeError):
        sxp.parse_all(b"(a)")


def test_child_accessors():
    x = sxp.parse_one("(vnet (@ (k v)) (id 97) (id 98) (empty) (bridge br))")
    assert sxp.child_value(x, "id") == "97"          # first duplicate wins
    assert sxp.child_value(x, "empty") is None       # (id) reads as missing
    assert sxp.child_value(x, "k") is None           # attribute list skipped
    assert sxp.child(x, "bridge") == ["bridge", "br"]
    assert sxp.child_value(x, "nope", "d") == "d"


# -- printer (protocol.md 12.3, 12.4) ------------------------------------------

@pytest.mark.parametrize("value, text", [
    ("vnet97", "vnet97"),
    ("0:0:0:0:0:0:0:97", "0:0:0:0:0:0:0:97"),
    ("/etc/x.sxp~", "/etc/x.sxp~"),
    ("@", "@"),
    ("a b", "'a b'"),
    ("it's", '"it\'s"'),
    ("a'b\"c", "'a\\'b\"c'"),
    ("", "''"),
    ("tab\there", "'tab\\there'"),
    ("\x01", "'\\x01'"),
])
def test_to_string_quoting(value, text):
    assert sxp.to_string(value) == text
    assert sxp.parse_one(f"(k {text})") == ["k", value]


def test_to_string_lists_and_numbers():
    assert sxp.to_string(["vnet", ["id", "97"], ["n", 3]]) == "(vnet (id 97) (n 3))"
    with pytest.raises(TypeError):
        sxp.to_string(["b", True])


def test_pretty_fits_on_one_line():
    config = ["vnet", ["id", "97"], ["bridge", "vnet97"], ["vnetif", "vnif97"],
              ["security", "none"]]
    assert sxp.pretty(config) == "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))\n"


def test_pretty_breaks_long_lists():
    config = ["vnet", ["id", "0000:0000:0000:0000:0000:0000:0000:0097"],
              ["bridge", "vnet0097"], ["vnetif", "vnif0097"], ["comment", "x" * 30]]
    assert sxp.pretty(config) == (
        "(vnet\n"
        "    (id 0000:0000:0000:0000:0000:0000:0000:0097)\n"
        "    (bridge vnet0097)\n"
        "    (vnetif vnif0097)\n"
        f"    (comment {'x' * 30})\n"
        ")\n")


def test_pretty_nested_break_and_atom():
    assert sxp.pretty(["a", ["b", "c" * 10, "d" * 10]], width=16) == (
        "(a\n    (b\n        cccccccccc\n        dddddddddd\n    )\n)\n")
    assert sxp.pretty("atom") == "atom\n"


# -- properties -----------------------------------------------------------------

atoms = st.text(st.characters(min_codepoint=1, max_codepoint=0x7e), max_size=8)
sxprs = st.recursive(atoms, lambda kids: st.lists(kids, max_size=5), max_leaves=25)


@given(st.lists(sxprs, max_size=4).map(lambda x: ["top"] + x))
def test_round_trip(value):
    assert sxp.parse_one(sxp.to_string(value)) == value
    assert sxp.parse_one(sxp.pretty(value, width=20)) == value


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_forms_or_parse_error(text):
    try:
        forms = sxp.parse_all(text)
    except ParseError:
        return
    assert isinstance(forms, list)


@settings(max_examples=300)
@given(st.text(alphabet="()'\"\\#;[] \nax0\x04", max_size=60))
def test_syntax_heavy_text_gives_forms_or_parse_error(text):
    try:
        sxp.parse_all(text)
    except ParseError:
        pass


# Differential test against sexpdata where both grammars agree: lists of
# lower-case word atoms (no digits: sexpdata makes numbers; no 't' or 'nil')
# and double-quoted strings without escapes.
words = st.text(alphabet="abcdefghijklmnopqrsuvwxyz-", min_size=2, max_size=6).filter(
    lambda w: w != "nil" and not w.startswith("-"))
quoted = st.text(alphabet="abc XYZ.,", max_size=6).map(lambda s: ("q", s))
agreed = st.recursive(st.one_of(words, quoted), lambda kids: st.lists(kids, max_size=4),
                      max_leaves=15)


def _render(value) -> str:
    if isinstance(value, tuple):
        return '"' + value[1] + '"'
    if isinstance(value, list):
        return "(" + " ".join(_render(v) for v in value) + ")"
    return value


def _plain(value):
    if isinstance(value, tuple):
        return value[1]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _from_sexpdata(value):
    if isinstance(value, list):
        return [_from_sexpdata(v) for v in value]
    return str(value)


@given(st.lists(agreed, max_size=4))
def test_agrees_with_sexpdata(value):
    text = _render(value)
    assert sxp.parse_one(text) == _plain(value)
    assert _from_sexpdata(sexpdata.loads(text)) == _plain(value)


# -- framing: where the first expression ends (design.md 6) --------------------------

def scan(*chunks: bytes) -> tuple:
    scanner = sxp.FormScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.end, scanner.more


@pytest.mark.parametrize("data,end,more", [
    (b"(vnet.list)", 11, False),
    (b"(vnet.li", None, False),
    (b"# (not yet\n(a (b \"x)\" 'y)' \\\"q\")) ", 33, False),
    (b"vnet.list", None, False),            # an atom may still grow
    (b"vnet.list\n", 9, False),
    (b"abc(", 3, True),
    (b"(a)(b)", 3, True),
    (b"(a) # (b)\n ", 3, False),
    (b"'a\\'b' ", 6, False),
    (b"(a)\x04(b)", 3, False),              # ctrl-D ends the input
    (b"(a \x04", 4, False),
    (b")", 1, False),                       # bound to fail: answered at once
    (b"(a \x00 b) (c)", 4, False),
    (b"(" * 101, 101, False),
    (b"", None, False),
    (b"  \n# only a comment", None, False),
])
def test_first_expression_end(data, end, more):
    assert scan(data) == (end, more)
    assert scan(*[data[i:i + 1] for i in range(len(data))]) == (end, more)


def _forms(data: bytes):
    try:
        return sxp.parse_all(data.decode("utf-8", "replace"))
    except ParseError:
        return None


PIECES = [b"(", b")", b" ", b"\n", b"#", b'"', b"'", b"\\", b"a", b"x7", b"\x04", b"\xff",
          b"\xc3\xa9", b"[", b";", b"\x00"]
framing_bytes = st.one_of(st.binary(max_size=80),
                          st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join))


@settings(max_examples=500)
@given(framing_bytes, st.lists(st.integers(0, 80), max_size=4))
def test_scanner_agrees_with_the_parser(data, cuts):
    end, more = scan(data)
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    assert scan(*[data[a:b] for a, b in zip(bounds, bounds[1:])]) == (end, more)
    forms = _forms(data)
    if end is None:
        # Not complete yet: nothing read, or a lone atom that may still grow.
        assert not more
        assert forms is None or forms == [] or (len(forms) == 1 and isinstance(forms[0], str))
        return
    assert 0 < end <= len(data)
    first = _forms(data[:end])
    assert first is None or len(first) <= 1
    if forms is not None:
        assert first == forms[:1]
        assert more == (len(forms) > 1)


@given(sxprs)
def test_scanner_waits_for_the_whole_expression(value):
    data = sxp.to_string(value).encode()
    for j in range(len(data)):
        assert scan(data[:j]) == (None, False)
    complete = data if isinstance(value, list) else data + b" "
    assert scan(complete) == (len(data), False)

"""The package's architecture, checked: layers, cycles, sans-IO, citations.

The layer order is written once, in docs/architecture.md (the fenced block
marked ``layers``); this test reads it from there.  It fails when a module
imports from a layer above its own (imports inside functions count too),
when the imports form a cycle, when a sans-IO layer imports sockets,
selectors, pyroute2 or the clock, when a module belongs to no layer, or when
code, tests or docs cite a docs section that does not exist, a document
outside the repository or an issue number.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "xend_vnet"
DOCS = os.path.join(REPO, "docs")
ARCHITECTURE = os.path.join(DOCS, "architecture.md")
# What a sans-IO module may not touch: the network, event loops, the clock.
IO_MODULES = {"socket", "selectors", "select", "asyncio", "pyroute2", "time", "datetime"}
CITED_ELSEWHERE = re.compile(
    r"\b(wire|management|platform|style)\.md\b|\.\./shared|/work/shared|\bissues? #?\d+\b",
    re.IGNORECASE)


@dataclass(frozen=True)
class Layer:
    rank: int
    name: str
    sans_io: bool
    prefixes: tuple[str, ...]


def read_layers(path: str = ARCHITECTURE) -> list[Layer]:
    """The ``layers`` block: ``name [sans-io]: module-prefix ...``, lowest first."""
    text = open(path, encoding="utf-8").read()
    block = re.search(r"^```layers\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, f"{path} has no ```layers block"
    layers = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, prefixes = line.partition(":")
        words = head.split()
        layers.append(Layer(len(layers), words[0], "sans-io" in words[1:],
                            tuple(prefixes.split())))
    return layers


def package_modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the package."""
    found = {}
    for root, dirs, files in os.walk(os.path.join(REPO, PACKAGE)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(root, f)
    return found


def _typing_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (not run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: str, modules: dict[str, str],
               runtime_only: bool = False) -> set[str]:
    """Every module ``name`` imports, anywhere in the file (inside functions
    too), resolved to the longest known module name for package-internal
    imports; with ``runtime_only``, not those only type checkers see."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = path.endswith("__init__.py")
    skip = _typing_only(tree) if runtime_only else set()
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
    return out


def layer_of(module: str, layers: list[Layer]) -> Layer | None:
    best = None
    for layer in layers:
        for prefix in layer.prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                    best is None or len(prefix) > len(best[0])):
                best = (prefix, layer)
    return best[1] if best else None


@pytest.fixture(scope="module")
def graph():
    layers = read_layers()
    modules = package_modules()
    edges = {name: imports_of(name, path, modules) for name, path in modules.items()}
    return layers, modules, edges


@pytest.fixture(scope="module")
def runtime_edges():
    modules = package_modules()
    return {name: imports_of(name, path, modules, runtime_only=True)
            for name, path in modules.items()}


def test_every_module_belongs_to_a_layer(graph):
    layers, modules, _ = graph
    assert [m for m in sorted(modules) if layer_of(m, layers) is None] == []


def layer_violations(edges: dict[str, set[str]], layers: list[Layer]) -> list[str]:
    wrong = []
    for name, targets in sorted(edges.items()):
        here = layer_of(name, layers)
        for target in sorted(targets):
            there = layer_of(target, layers) if target.startswith(PACKAGE) else None
            if there is not None and there.rank > here.rank:
                wrong.append(f"{name} ({here.name}) imports {target} ({there.name})")
    return wrong


def sans_io_violations(edges: dict[str, set[str]], layers: list[Layer]) -> list[str]:
    wrong = []
    for name, targets in sorted(edges.items()):
        if layer_of(name, layers).sans_io:
            bad = {t for t in targets if t.split(".")[0] in IO_MODULES}
            wrong.extend(f"{name} imports {t}" for t in sorted(bad))
    return wrong


def test_no_module_imports_from_a_layer_above_its_own(graph):
    layers, _, edges = graph
    assert layer_violations(edges, layers) == []


def test_sans_io_layers_import_no_sockets_selectors_netlink_or_clock(graph):
    layers, _, edges = graph
    assert sans_io_violations(edges, layers) == []


def test_the_checks_catch_what_they_are_for():
    layers = [Layer(0, "wire", True, ("xend_vnet.kernel_shim.wire",)),
              Layer(1, "core", True, ("xend_vnet.kernel_shim.core",)),
              Layer(2, "datapath", False, ("xend_vnet.kernel_shim.datapath",))]
    edges = {"xend_vnet.kernel_shim.core.engine": {"xend_vnet.kernel_shim.datapath.udp",
                                                    "xend_vnet.kernel_shim.wire.codec"},
             "xend_vnet.kernel_shim.wire.codec": {"socket", "struct"},
             "xend_vnet.kernel_shim.datapath.udp": {"selectors",
                                                     "xend_vnet.kernel_shim.core.engine"}}
    assert layer_violations(edges, layers) == [
        "xend_vnet.kernel_shim.core.engine (core) imports xend_vnet.kernel_shim.datapath.udp "
        "(datapath)"]
    assert sans_io_violations(edges, layers) == [
        "xend_vnet.kernel_shim.wire.codec imports socket"]
    # Spelled in pieces, so this file does not itself cite what it forbids.
    assert CITED_ELSEWHERE.search("as " + "wire" + ".md 4.4 says")
    assert CITED_ELSEWHERE.search("fixed for " + "issue" + " 7")
    assert not CITED_ELSEWHERE.search("protocol.md 4.4 and design.md 7")


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle among package modules, or [] (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges or nxt == node:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_imports_form_no_cycle(runtime_edges):
    assert find_cycle(runtime_edges) == []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


# -- citations ----------------------------------------------------------------------------

NUMBER = r"\d+(?:\.\d+)*"
# "protocol.md 3.5, 5", "design.md section 7", "protocol.md 10.2-10.3"; a number
# followed by a unit ("design.md 7, 10 minutes") is prose, not a section.
CITATION = re.compile(
    rf"\b([a-z][a-z_-]*)\.md\b(?:\s+section)?"
    rf"((?:\s+{NUMBER})(?:\s*(?:,|-|–|and)\s*{NUMBER}\b(?!\s*(?:s|ms|%|bytes|minutes|seconds)\b))*)?")
SECTION = re.compile(r"\d+(?:\.\d+)*")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
CITING_TOPS = ("xend_vnet", "tests", "benchmarks", "docs", "demo", "etc", "README.md",
               "Makefile", "conftest.py", "setup.cfg", ".ci")


def citing_files() -> list[str]:
    out = []
    for top in CITING_TOPS:
        path = os.path.join(REPO, top)
        if os.path.isfile(path):
            out.append(path)
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            out.extend(os.path.join(root, f) for f in files
                       if not f.endswith((".pyc", ".json", ".o")))
    return sorted(out)


def sections(doc: str) -> set[str]:
    return set(HEADING.findall(open(os.path.join(DOCS, doc), encoding="utf-8").read()))


def cited_sections(text: str) -> list[tuple[str, str]]:
    """``(document, section)`` for each numbered citation in ``text``."""
    out = []
    for m in CITATION.finditer(text):
        doc = m.group(1) + ".md"
        out.extend((doc, s) for s in SECTION.findall(m.group(2) or ""))
    return out


def test_cited_sections_parse():
    assert cited_sections("see protocol.md 3.5, 5 and design.md section 7") == [
        ("protocol.md", "3.5"), ("protocol.md", "5"), ("design.md", "7")]
    assert cited_sections("(protocol.md 10.2-10.3)") == [
        ("protocol.md", "10.2"), ("protocol.md", "10.3")]
    assert cited_sections("docs/vxlan.md explains") == []


def test_code_tests_and_docs_cite_only_sections_that_exist():
    here = os.path.abspath(__file__)
    known: dict[str, set[str]] = {}
    wrong = []
    for path in citing_files():
        if path == here:
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        rel = os.path.relpath(path, REPO)
        for m in CITED_ELSEWHERE.finditer(text):
            wrong.append(f"{rel}: cites {m.group(0)!r} (outside the repository)")
        for doc, section in cited_sections(text):
            if doc == "README.md":
                continue
            if not os.path.exists(os.path.join(DOCS, doc)):
                wrong.append(f"{rel}: cites {doc}, which docs/ does not have")
                continue
            if doc not in known:
                known[doc] = sections(doc)
            if section not in known[doc]:
                wrong.append(f"{rel}: cites {doc} {section}, which has no such section")
    assert wrong == []


def test_docs_cited_by_name_exist():
    wrong = []
    for path in citing_files():
        text = open(path, encoding="utf-8", errors="replace").read()
        for doc in set(re.findall(r"\bdocs/([a-z][a-z_-]*\.md)\b", text)):
            if not os.path.exists(os.path.join(DOCS, doc)):
                wrong.append(f"{os.path.relpath(path, REPO)}: docs/{doc}")
    assert wrong == []

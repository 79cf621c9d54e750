#!/usr/bin/env python3
"""Lists import circles between sibling modules of each workspace crate.

A module A uses its sibling B when code in A (or in a module inside A) names a path into B:
`use crate::b::…`, `crate::b::…` in an expression or type, `super::b` from inside A, or
a name the parent re-exports from B (`pub use b::Name`). Unit test modules
(`#[cfg(test)] mod tests`) are left out: a test may use whatever it checks. Sibling modules
that use each other, directly or around a longer loop, form a circle: each is listed with
the names that close it.

    scripts/module-cycles.py [CRATE_DIR...]     (default: every crate of the workspace)

Exits 1 when a circle is found, so CI can run it.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def workspace_members():
    """The package directories listed under `members` in the workspace's Cargo.toml."""
    with open(os.path.join(ROOT, "Cargo.toml")) as manifest:
        text = manifest.read()
    members = re.search(r"^members\s*=\s*\[(.*?)\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', members.group(1)) if members else []


CRATES = workspace_members()

PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
GROUP = re.compile(r"\b(crate|super|self)((?:::\w+)*)::\{([^;]*?)\}", re.S)
COMMENT = re.compile(r"//[^\n]*")


def module_of(src, path):
    """The module path (list of names) a source file defines."""
    relative = os.path.relpath(path, src)[:-3].split(os.sep)
    if relative[-1] in ("lib", "main", "mod"):
        relative = relative[:-1]
    if relative[:1] == ["bin"]:
        return None
    return relative


def resolve(module, anchor, rest):
    """The absolute module path of `anchor::rest` written in `module`."""
    if anchor == "crate":
        base = []
    else:
        # `self` is the file's own module, `super` its parent.
        base = list(module)
        if anchor == "super":
            base = base[:-1]
    parts = [p for p in rest.split("::") if p]
    while parts and parts[0] == "super":
        base = base[:-1]
        parts = parts[1:]
    return base + parts


TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\(\w+\))?\s+)?mod\s+\w+\s*\{")


def without_tests(text):
    """The text without its `#[cfg(test)] mod … { … }` blocks: unit tests may use any module."""
    while True:
        match = TEST_MODULE.search(text)
        if not match:
            return text
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        text = text[:match.start()] + text[end:]


def paths_in(text):
    text = COMMENT.sub("", text)
    found = []
    for anchor, prefix, group in GROUP.findall(text):
        for item in re.split(r",", group):
            item = item.strip().split(" as ")[0].strip()
            name = re.match(r"(\w+(?:::\w+)*)", item)
            if name:
                found.append((anchor, f"{prefix}::{name.group(1)}"))
    found += PATH.findall(GROUP.sub("", text))
    return found


REEXPORT = re.compile(r"\bpub(?:\(crate\))?\s+use\s+([^;]+);")


def reexports(modules, known):
    """(module, name) -> the module a `pub use` in `module` takes `name` from."""
    aliases = {}
    for path, module in modules.items():
        text = without_tests(COMMENT.sub("", open(path).read()))
        for statement in REEXPORT.findall(text):
            statement = " ".join(statement.split())
            if not re.match(r"(crate|super|self)::", statement):
                statement = "self::" + statement
            for anchor, rest in paths_in(statement):
                target = resolve(module, anchor, rest)
                name = target[-1]
                while target and tuple(target) not in known:
                    target = target[:-1]
                if target and len(target) > len(module):
                    aliases[(tuple(module), name)] = target
    return aliases


def crate_edges(crate_dir):
    src = os.path.join(crate_dir, "src")
    modules = {}
    for directory, _, files in os.walk(src):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(directory, name)
                module = module_of(src, path)
                if module is not None:
                    modules[path] = module
    known = {tuple(m) for m in modules.values()}
    aliases = reexports(modules, known)
    edges = defaultdict(lambda: defaultdict(set))
    for path, module in modules.items():
        text = without_tests(COMMENT.sub("", open(path).read()))
        for anchor, rest in paths_in(text):
            named = resolve(module, anchor, rest)
            # The longest known module the path names, or the module a re-export there
            # takes the next name from.
            target = list(named)
            while target and tuple(target) not in known:
                target = target[:-1]
            while len(named) > len(target) and (tuple(target), named[len(target)]) in aliases:
                target = aliases[(tuple(target), named[len(target)])]
            if not target:
                continue
            common = 0
            while common < min(len(module), len(target)) and module[common] == target[common]:
                common += 1
            if common >= len(module) or common >= len(target):
                continue  # a module and its own descendants or ancestors
            parent = tuple(module[:common])
            edges[parent][(module[common], target[common])].add("::".join(target))
    return edges


def circles(pairs):
    graph = defaultdict(set)
    for a, b in pairs:
        graph[a].add(b)
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return result


def main():
    crates = sys.argv[1:] or [os.path.join(ROOT, c) for c in CRATES]
    found = 0
    for crate_dir in crates:
        name = os.path.basename(os.path.normpath(crate_dir))
        for parent, pairs in sorted(crate_edges(crate_dir).items()):
            for component in circles(pairs):
                found += 1
                where = "::".join((name,) + parent)
                print(f"{where}: {' <-> '.join(component)}")
                for (a, b), targets in sorted(pairs.items()):
                    if a in component and b in component:
                        print(f"    {a} uses {', '.join(sorted(targets))}")
    if found:
        sys.exit(1)
    print("no import circles between sibling modules")


main()

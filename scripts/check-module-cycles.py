#!/usr/bin/env python3
"""Fails when modules of one crate import each other in a cycle.

Reads every crate's `src/` (the installer, the format, the release side, xtask, the test kit),
collects each top-level module's `crate::<module>` references outside comments and test
modules, and reports every strongly connected group of more than one module. The crates
themselves depend one way by construction (Cargo refuses cycles between packages).
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATE_SRCS = ["src", "crates/format/src", "crates/build/src", "crates/fleet/src", "crates/testkit/src", "xtask/src"]


def module_graph(src):
    graph = {}
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src).with_suffix("")
        top = rel.parts[0]
        if top in ("lib", "main", "bin"):
            continue
        text = re.sub(r"//[^\n]*", "", path.read_text(encoding="utf-8"))
        text = text.split("#[cfg(test)]", 1)[0]
        refs = set(re.findall(r"\bcrate::([a-z_0-9]+)", text)) - {top}
        graph.setdefault(top, set()).update(refs)
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def cycles(graph):
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    bad = False
    for name in CRATE_SRCS:
        src = ROOT / name
        if not src.is_dir():
            continue
        found = cycles(module_graph(src))
        for group in found:
            bad = True
            print(f"error: module cycle in {name}: {' <-> '.join(group)}", file=sys.stderr)
        if not found:
            print(f"==> {name}: no module cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The daemon's module graph: which top-level module of host/elara/src uses which (`crate::X`
paths and `use crate::{X, ...}` lists, `super::` from a module's own files counts as itself).
Prints the edges and fails (exit 1) on a cycle, naming it.

    python3 scripts/check-modules.py [SRC_DIR]      (default host/elara/src)
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "host", "elara", "src")
src = os.path.normpath(src)

def top_module(path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first

modules = set()
for entry in os.listdir(src):
    if entry.endswith(".rs") and entry not in ("main.rs", "lib.rs"):
        modules.add(entry[:-3])
    elif os.path.isdir(os.path.join(src, entry)):
        modules.add(entry)

edges = {}
path_re = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
brace_re = re.compile(r"\bcrate::\{([^}]*)\}", re.S)
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(root, f)
        me = top_module(p)
        if me in ("main", "lib"):
            continue
        text = open(p, encoding="utf-8").read()
        # Comments do not make a dependency.
        text = re.sub(r"//[^\n]*", "", text)
        used = set(path_re.findall(text))
        for group in brace_re.findall(text):
            used.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        for m in used:
            if m in modules and m != me:
                edges.setdefault(me, set()).add(m)

for m in sorted(edges):
    print(f"{m} -> {', '.join(sorted(edges[m]))}")

# Cycles: strongly connected components with more than one module.
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1
    stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in sorted(modules):
    if v not in index:
        visit(v)
if sccs:
    for c in sccs:
        pairs = [f"{a} -> {b}" for a in c for b in sorted(edges.get(a, ())) if b in c]
        print(f"cycle among {{{', '.join(c)}}}: {'; '.join(pairs)}", file=sys.stderr)
    sys.exit(1)
print(f"{len(modules)} modules, no cycle")

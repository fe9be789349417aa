#!/usr/bin/env python3
"""List the `crate::` edges between agentgate's top-level modules and fail on a cycle or a layering breach.

A top-level module is a file `src/NAME.rs` or a folder `src/NAME/`. An edge A -> B is any `crate::B` path
(in `use`, in an expression or a `pub use`) in A's code; unit-test modules (`#[cfg(test)] mod tests`) and
comments are ignored. `lib.rs` and `main.rs` are the crate's root and are not counted.

LAYERS is the module map of docs/architecture.md, bottom first: a module may import only modules below it.

Usage: python3 scripts/module-graph.py [--dot] [SRC_DIR]
Exit status: 0 when the graph is acyclic and follows LAYERS, 1 otherwise.
"""
import collections
import os
import re
import sys

LAYERS = [
    "ids", "http_util", "activity", "teams", "secrets", "config", "telemetry", "metrics", "service_url",
    "store", "auth", "entra", "graph", "agent_id", "connector", "bridge", "inbound", "mcp", "teams_app", "doctor",
    "server", "cli",
]


def strip(text):
    cut = re.search(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod tests\b", text)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] if not line.lstrip().startswith("\"") else line for line in text.splitlines())


def edges_of(root):
    edges = collections.defaultdict(set)
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            first = os.path.relpath(path, root).split(os.sep)[0]
            module = first[:-3] if first.endswith(".rs") else first
            if module in ("lib", "main"):
                continue
            edges.setdefault(module, set())
            text = strip(open(path, encoding="utf-8").read())
            targets = set(re.findall(r"\bcrate::(\w+)", text))
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                targets.update(re.findall(r"(?:^|,)\s*(\w+)", group))
            edges[module].update(t for t in targets if t != module)
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv):
    dot = "--dot" in argv
    args = [a for a in argv if a != "--dot"]
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    edges = edges_of(root)
    if dot:
        print("digraph modules {")
        for m in sorted(edges):
            for t in sorted(edges[m]):
                print(f'  "{m}" -> "{t}";')
        print("}")
        return 0
    count = sum(len(t) for t in edges.values())
    print(f"{len(edges)} modules, {count} edges")
    for m in sorted(edges, key=lambda m: LAYERS.index(m) if m in LAYERS else -1):
        print(f"  {m:12} -> {' '.join(sorted(edges[m])) or '(nothing)'}")
    failed = False
    for comp in cycles(edges):
        print(f"CYCLE between: {', '.join(comp)}")
        failed = True
    for m in sorted(edges):
        if m not in LAYERS:
            print(f"UNLISTED module `{m}`: add it to LAYERS (and to docs/architecture.md's module map)")
            failed = True
            continue
        for t in sorted(edges[m]):
            if t in LAYERS and LAYERS.index(t) >= LAYERS.index(m):
                print(f"LAYERING: `{m}` imports `{t}`, which is not below it")
                failed = True
    print("module graph: " + ("FAILED" if failed else "acyclic, layered as LAYERS says"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

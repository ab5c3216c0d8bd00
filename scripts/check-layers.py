#!/usr/bin/env python3
"""Checks the host's dependency rules (docs/ARCHITECTURE.md, "Layers"):

- layers point down: api -> tenants -> runtime -> compute (commands sits on
  top); no module imports one above it;
- compute never imports runtime, tenants, api or commands;
- the cpu and cuda backends never import each other (cuda/tests.rs, which
  runs the CPU backend as the reference for the GPU's results, excepted);
- gguf imports nothing of realm's outside itself; quant imports only gguf;
  the CPU kernels' `features` and `x86` import nothing of realm's;
- no import cycles: in every folder of host/src, the modules beside each
  other (a module with all its submodules as one) form no cycle.

An import is a `use` path or an inline path starting with `crate::`,
`super::` or `self::`, resolved to the module file it names. Exit 1 with one
line per broken rule.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "host" / "src"
LAYERS = {"compute": 0, "runtime": 1, "tenants": 2, "api": 3, "commands": 4}
PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\buse\s+((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(path: Path) -> tuple:
    """The module path of a file: host/src/compute/cpu/mod.rs -> (compute, cpu)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def files() -> dict:
    return {module_of(p): p for p in ROOT.rglob("*.rs")}


TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|r#*"|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])\'', re.S)


def strip_comments(text: str) -> str:
    """Comments and string literals blanked in one left-to-right pass, so that
    `//` inside a string and quotes inside comments are read as Rust reads them."""
    out, at = [], 0
    for m in TOKENS.finditer(text):
        if m.start() < at:
            continue
        out.append(text[at : m.start()])
        token = m.group(0)
        if token.startswith("r"):
            hashes = token[1:-1]
            end = text.find('"' + hashes, m.end())
            at = len(text) if end < 0 else end + 1 + len(hashes)
            out.append('""')
            continue
        out.append('""' if token.startswith('"') else " ")
        at = m.end()
    out.append(text[at:])
    return "".join(out)


def expand_groups(text: str) -> list:
    """`use a::{b, c::{d}}` as the paths a::b and a::c::d (one level of
    nesting is what this code base uses)."""
    paths = []
    for base, body in GROUP.findall(text):
        for inner in re.findall(r"([A-Za-z_][A-Za-z0-9_:]*)::\{([^{}]*)\}", body):
            for item in inner[1].split(","):
                paths.append(f"{base}::{inner[0]}::{item.strip()}")
        for item in re.sub(r"[A-Za-z_][A-Za-z0-9_:]*::\{[^{}]*\}", "", body).split(","):
            item = item.strip().split(" as ")[0]
            if item:
                paths.append(f"{base}::{item}")
    return paths


def reexports(known: dict) -> dict:
    """(module, name) -> the module a `pub use` in `module` takes `name` from."""
    out = {}
    for module, path in known.items():
        text = strip_comments(path.read_text())
        for m in re.finditer(r"\bpub use ([^;]*);", text):
            for full in expand_groups("use " + m.group(1) + ";") if "{" in m.group(1) else [m.group(1)]:
                name = full.split("::")[-1].split(" as ")[-1].strip()
                out[(module, name)] = full
    return out


def resolve(module: tuple, path: str, known: dict, exported: dict, depth: int = 0):
    """The deepest module file `path` names, from `module`, through re-exports."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    else:
        # In a mod.rs or a leaf file alike, `self` is the module itself and
        # `super` its parent.
        base = module
        while parts and parts[0] in ("self", "super"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
        rest = parts
    target = base
    for i, part in enumerate(rest):
        if target + (part,) in known:
            target = target + (part,)
        elif (target, part) in exported and depth < 8:
            return resolve(target, exported[(target, part)], known, exported, depth + 1)
        else:
            break
    return target


def imports(known: dict) -> dict:
    """module -> {the modules it imports}."""
    exported = reexports(known)
    out = {}
    for module, path in known.items():
        text = strip_comments(path.read_text())
        paths = [m.group(1) for m in PATH.finditer(text)]
        paths += [p for m in GROUP.finditer(text) for p in expand_groups(m.group(0))]
        out[module] = {t for t in (resolve(module, p, known, exported) for p in paths) if t != module}
    return out


def within(module: tuple, prefix: tuple) -> bool:
    return module[: len(prefix)] == prefix


def check() -> list:
    known = files()
    edges = imports(known)
    errors = []
    leaves = [("compute", "cpu", "kernels", "features"), ("compute", "cpu", "kernels", "x86")]
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            if not src or not dst:
                continue
            s, d = LAYERS.get(src[0]), LAYERS.get(dst[0])
            if s is not None and d is not None and d > s:
                errors.append(f"{'::'.join(src)} imports {'::'.join(dst)}, a layer above it")
            backend = {("compute", "cpu"): ("compute", "cuda"), ("compute", "cuda"): ("compute", "cpu")}
            for mine, other in backend.items():
                exempt = src == ("compute", "cuda", "tests")
                if within(src, mine) and within(dst, other) and not exempt:
                    errors.append(f"{'::'.join(src)} imports the other backend, {'::'.join(dst)}")
            for leaf in leaves:
                if within(src, leaf) and not within(dst, leaf) and src != dst:
                    errors.append(f"{'::'.join(src)} imports {'::'.join(dst)}: it is a leaf")
            if within(src, ("compute", "gguf")) and not within(dst, ("compute", "gguf")):
                errors.append(f"{'::'.join(src)} imports {'::'.join(dst)}: gguf is a leaf")
            quant_ok = within(dst, ("compute", "quant")) or within(dst, ("compute", "gguf"))
            if within(src, ("compute", "quant")) and not quant_ok:
                errors.append(f"{'::'.join(src)} imports {'::'.join(dst)}: quant imports only gguf")
    errors += cycles(known, edges)
    return errors


def cycles(known: dict, edges: dict) -> list:
    """Cycles among sibling modules, each taken with its submodules."""
    errors = []
    folders = {m[:-1] for m in known if m} | {()}
    for folder in sorted(folders):
        children = sorted({m[: len(folder) + 1] for m in known if len(m) > len(folder) and m[: len(folder)] == folder})
        graph = {c: set() for c in children}
        for src, targets in edges.items():
            a = src[: len(folder) + 1]
            if a not in graph:
                continue
            for dst in targets:
                b = dst[: len(folder) + 1]
                if b in graph and b != a:
                    graph[a].add(b)
        state = {}

        def visit(node, stack):
            state[node] = 1
            for nxt in sorted(graph[node]):
                if state.get(nxt) == 1:
                    loop = stack[stack.index(nxt):] + [nxt]
                    errors.append("import cycle: " + " -> ".join("::".join(m) for m in loop))
                elif nxt not in state:
                    visit(nxt, stack + [nxt])
            state[node] = 2

        for c in children:
            if c not in state:
                visit(c, [c])
    return errors


if __name__ == "__main__":
    problems = check()
    for p in problems:
        print(f"check-layers: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check-layers: {len(files())} modules, the dependency rules hold")

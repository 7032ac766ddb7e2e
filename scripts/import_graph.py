"""Print the import graph of the flowtie_fast package and check its layering.

Reads every module of ``flowtie_fast`` with :mod:`ast` (nothing is imported)
and prints, for each module, the package modules it imports at module level.
It then reports

* circles among module-level imports (strongly connected components), and
* imports inside functions or classes that name anything other than an
  optional dependency (``OPTIONAL`` below): such an import hides an edge of
  the graph from the reader and usually dodges a circle.

Usage::

    python scripts/import_graph.py          # graph, circles, function-level imports
    python scripts/import_graph.py --check  # exit status 1 if a rule is broken

Imports guarded by ``if TYPE_CHECKING:`` are ignored (they never run).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "flowtie_fast"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Top-level names that may be imported inside a function: optional or heavy
#: dependencies whose import is deferred until they are needed.
OPTIONAL = frozenset({
    "torch", "abtem", "ase", "dask", "distributed", "libertem", "cupy", "cupyx",
    "pyfftw", "matplotlib", "h5py", "rsciio", "hyperspy", "numba", "scipy",
    "psutil", "tqdm",
})


def module_name(path: Path) -> str:
    """Dotted module name of a file under ``ROOT``."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Absolute module names an import statement refers to.

    For ``from X import a, b`` both ``X.a`` and ``X`` are candidates; the caller
    keeps ``X.a`` where it is a module of the package and ``X`` otherwise.
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = current.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base)
        target = f"{prefix}.{node.module}" if node.module else prefix
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def scan(path: Path, modules: set[str]):
    """Module-level edges and function-level imports of one file.

    Returns ``(edges, nested)``: ``edges`` the set of package modules imported
    at module level; ``nested`` a list of ``(line, imported name, top-level
    package)`` for every import inside a function or class body.
    """
    name = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: set[str] = set()
    nested: list[tuple[int, str, str]] = []

    def targets(node):
        found = []
        cands = resolve(name, is_package, node)
        if isinstance(node, ast.ImportFrom):
            base, subs = cands[0], cands[1:]
            hits = [s for s in subs if s in modules]
            found = hits if hits else [base]
            if hits and base in modules and len(hits) < len(subs):
                found.append(base)
        else:
            found = cands
        return found

    def visit(node, depth):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub, depth)
                continue
            visit_stmt(child, depth)

    def visit_stmt(child, depth):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            for target in targets(child):
                if depth == 0:
                    if target in modules or target.startswith(PACKAGE + "."):
                        # the nearest enclosing module of the package
                        t = target
                        while t not in modules and "." in t:
                            t = t.rsplit(".", 1)[0]
                        if t != name:
                            edges.add(t)
                else:
                    nested.append((child.lineno, target, target.split(".")[0]))
            return
        inner = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                           ast.ClassDef, ast.Lambda))
        visit(child, inner)

    visit(tree, 0)
    return edges, nested


def build():
    """The whole graph: ``({module: edges}, {module: nested imports})``."""
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph, nested = {}, {}
    for path in files:
        name = module_name(path)
        graph[name], nested[name] = scan(path, modules)
    # a module imports its parent packages too (running their __init__)
    return graph, nested


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def disallowed(nested: dict[str, list[tuple[int, str, str]]]) -> list[tuple[str, int, str]]:
    """Function-level imports that are not of an optional dependency."""
    bad = []
    for module, items in sorted(nested.items()):
        for line, target, top in items:
            if top not in OPTIONAL:
                bad.append((module, line, target))
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="print only the problems; exit status 1 if there are any")
    args = parser.parse_args(argv)
    graph, nested = build()
    if not args.check:
        for module in sorted(graph):
            deps = ", ".join(sorted(d.removeprefix(PACKAGE + ".") for d in graph[module]))
            print(f"{module.removeprefix(PACKAGE + '.') or PACKAGE:28s} -> {deps}")
        print()
    found = circles(graph)
    bad = disallowed(nested)
    print(f"circles: {len(found) or 'none'}")
    for comp in found:
        print("  " + " <-> ".join(c.removeprefix(PACKAGE + ".") for c in comp))
    print(f"function-level imports of non-optional modules: {len(bad) or 'none'}")
    for module, line, target in bad:
        print(f"  {module}:{line}: {target}")
    if not args.check:
        allowed = sorted({(m, t) for m, items in nested.items() for _, t, top in items
                          if top in OPTIONAL})
        print(f"function-level imports of optional dependencies: {len(allowed)}")
        for m, t in allowed:
            print(f"  {m.removeprefix(PACKAGE + '.')}: {t}")
    return 1 if (found or bad) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the import graph of the flowtie_fast package and check its layering.

Reads every module of ``flowtie_fast`` with :mod:`ast` (nothing is imported)
and prints, for each module, the package modules it imports at module level.
It then reports

* circles among module-level imports (strongly connected components; a
  module also depends on its package, whose ``__init__`` runs first, where
  that ``__init__`` imports anything but the package's own submodules);
* imports inside functions or classes of anything but an optional or heavy
  dependency (``OPTIONAL``), a platform-dependent standard module
  (``PLATFORM``) or a package module allowed to be loaded late
  (``LATE``, each with its reason): such an import hides an edge of the
  graph from the reader and usually dodges a circle; and
* runtime modules that import the research subpackages (``RESEARCH``), at
  any level: the runtime never imports them.

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
    "torch", "abtem", "ase", "dask", "distributed", "dask_cuda", "libertem", "cupy", "cupyx",
    "pyfftw", "matplotlib", "h5py", "rsciio", "hyperspy", "numba", "scipy",
    "psutil", "tqdm",
})

#: Standard modules that exist on some platforms or Python versions only.
PLATFORM = frozenset({"fcntl", "tomllib", "tomli"})

#: Package modules that may be imported inside a function, by the modules
#: named, and why.
LATE = {
    # Numba compiles or loads the CPU kernels when this module is imported;
    # the CPU backend imports it once it has checked Numba's settings.
    "flowtie_fast._numba_kernels": {"flowtie_fast.backend"},
    # The research commands load their subpackage when they run, so that
    # `flowtie reconstruct` starts without them (and without PyTorch).
    "flowtie_fast.simulation": {"flowtie_fast.cli"},
    "flowtie_fast.evaluation": {"flowtie_fast.cli"},
    "flowtie_fast.training": {"flowtie_fast.cli"},
    # FlowNet imports PyTorch: the runtime loads it when a model file is loaded
    # (the fused CPU path rebuilds the network from the file's weights).
    "flowtie_fast.flow.model": {"flowtie_fast.flow.infer"},
}

#: Subpackages for research that the runtime never imports.
RESEARCH = ("flowtie_fast.simulation", "flowtie_fast.evaluation", "flowtie_fast.training")
#: Modules that may import them: themselves, the command line and the tests' references.
RESEARCH_USERS = RESEARCH + ("flowtie_fast.cli", "flowtie_fast.testing")


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
    # Importing a module runs its parent packages' __init__ first: the module
    # depends on what they import, except on the package's own submodules
    # (an __init__ re-exporting its submodules runs each of them once).
    for name in list(graph):
        parent = name.rsplit(".", 1)[0] if "." in name else None
        if parent and parent in graph and parent != PACKAGE:
            outside = {d for d in graph[parent] if not d.startswith(parent + ".")}
            if outside:
                graph[name].add(parent)
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


def _late(module: str, target: str) -> bool:
    return any((target == m or target.startswith(m + ".")) and module in users
               for m, users in LATE.items())


def disallowed(nested: dict[str, list[tuple[int, str, str]]]) -> list[tuple[str, int, str]]:
    """Function-level imports that are not of an optional dependency, a
    platform module or a package module allowed late."""
    bad = []
    for module, items in sorted(nested.items()):
        for line, target, top in items:
            if top not in OPTIONAL and top not in PLATFORM and not _late(module, target):
                bad.append((module, line, target))
    return bad


def research_imports(graph, nested) -> list[tuple[str, str]]:
    """Runtime modules that import a research subpackage, at any level."""
    def research(t):
        return any(t == r or t.startswith(r + ".") for r in RESEARCH)

    def user(m):
        return any(m == r or m.startswith(r + ".") for r in RESEARCH_USERS)

    bad = set()
    for module, deps in graph.items():
        if not user(module):
            bad.update((module, d) for d in deps if research(d))
    for module, items in nested.items():
        if not user(module):
            bad.update((module, t) for _, t, _ in items if research(t))
    return sorted(bad)


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
    leaks = research_imports(graph, nested)
    print(f"circles: {len(found) or 'none'}")
    for comp in found:
        print("  " + " <-> ".join(c.removeprefix(PACKAGE + ".") for c in comp))
    print(f"function-level imports of non-optional modules: {len(bad) or 'none'}")
    for module, line, target in bad:
        print(f"  {module}:{line}: {target}")
    print(f"runtime imports of research subpackages: {len(leaks) or 'none'}")
    for module, target in leaks:
        print(f"  {module} -> {target}")
    if not args.check:
        allowed = sorted({(m, t) for m, items in nested.items() for _, t, top in items
                          if (m, t) not in {(b[0], b[2]) for b in bad}})
        print(f"function-level imports allowed (optional, platform, late): {len(allowed)}")
        for m, t in allowed:
            print(f"  {m.removeprefix(PACKAGE + '.')}: {t}")
    return 1 if (found or bad or leaks) else 0


if __name__ == "__main__":
    sys.exit(main())

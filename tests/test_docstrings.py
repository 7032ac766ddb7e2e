"""Every public object of the runtime package has a complete NumPy-style docstring.

For each runtime module of flowtie_fast (all but the research subpackages
simulation/, evaluation/ and training/ and the module testing.py), every
class and function named in its ``__all__`` (and, for a class, its public
methods and properties defined in the package; a module without ``__all__``
exports nothing of its own) is checked with numpydoc's validator, with the
checks that docs/conf.py selects in ``numpydoc_validation_checks``: the same
rules the API page is built under, extended to the public helpers that page
does not list.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

import numpydoc.validate as numpydoc_validate  # the `test` extra: missing, it fails

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "flowtie_fast"
RESEARCH = ("simulation", "evaluation", "training", "testing")
# flowtie_fast.stem.live imports LiberTEM (the `live` extra): walked where it is installed.
NOT_WALKED = set() if importlib.util.find_spec("libertem") else {f"{PACKAGE}.stem.live"}

# Known defects, to be fixed; an entry whose defect is gone fails too, so that
# the list only shrinks. Any defect not listed fails.
KNOWN: set = set()


def validation_checks() -> set:
    """The numpydoc checks docs/conf.py selects (``numpydoc_validation_checks``)."""
    tree = ast.parse((ROOT / "docs" / "conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "numpydoc_validation_checks" for t in node.targets):
            return numpydoc_validate.get_validation_checks(ast.literal_eval(node.value))
    raise AssertionError("docs/conf.py sets no numpydoc_validation_checks")


def _declares_all(module_name: str) -> bool:
    """Whether the module's source assigns ``__all__`` at its top level (read
    without importing it: flow/model.py, which has none, imports PyTorch)."""
    origin = importlib.util.find_spec(module_name).origin
    tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    return any(isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
               and "__all__" in {getattr(t, "id", None) for t in
                                 getattr(node, "targets", [getattr(node, "target", None)])}
               for node in tree.body)


def runtime_modules() -> list:
    """The names of the runtime modules of the package that declare
    ``__all__``, the package first."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}."):
        part = info.name.split(".")[1]
        if part in RESEARCH or info.name in NOT_WALKED or not _declares_all(info.name):
            continue
        names.append(info.name)
    return names


def _is_function(obj) -> bool:
    """A function, or a wrapper of one (``functools.lru_cache``, ``wraps``)."""
    return callable(obj) and inspect.isfunction(inspect.unwrap(obj))


def _members(cls) -> dict:
    """The public methods and properties of ``cls`` defined in the package,
    by dotted name (under the class that defines each)."""
    out = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith(PACKAGE):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if _is_function(attr) or isinstance(attr, (property, functools.cached_property)):
                out.setdefault(f"{klass.__module__}.{klass.__qualname__}.{name}", attr)
    return out


def public_objects() -> list:
    """Dotted names of the classes and functions of every runtime module's
    ``__all__`` defined in the package, with the classes' public members;
    each object once, under the module that defines it."""
    found = {}
    for module_name in runtime_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or _is_function(obj)):
                continue  # constants: documented in their module
            if not getattr(obj, "__module__", "").startswith(PACKAGE):
                continue
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
            if inspect.isclass(obj):
                for path, member in _members(obj).items():
                    found.setdefault(path, member)
    return sorted(found)


def test_public_docstrings_pass_numpydoc_validation():
    checks = validation_checks()
    objects = public_objects()
    assert len(objects) > 50, objects  # the walk found the package's objects
    defects, known = [], set()
    for path in objects:
        for code, message in numpydoc_validate.validate(path)["errors"]:
            if code in checks and (path, code) in KNOWN:
                known.add((path, code))
            elif code in checks:
                defects.append(f"{path} {code}: {message}")
    assert not defects, f"{len(defects)} docstring defects:\n" + "\n".join(defects)
    assert known == KNOWN, f"fixed: remove from KNOWN {sorted(KNOWN - known)}"

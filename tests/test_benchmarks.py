"""The benchmark suite stays discoverable where asv runs it."""


def test_every_benchmark_module_imports_without_torch():
    """asv imports every module of benchmarks/ to discover the suite, in an
    environment without PyTorch (a fresh-clone `asv run` builds one): a
    top-level torch import anywhere there breaks the whole run."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    modules = sorted(p.stem for p in (root / "benchmarks").glob("*.py"))
    assert "benchmark_solvers" in modules
    # benchmarks/ holds the asv suite only: studies and profiles live in scripts/
    assert all(m in ("__init__", "common") or m.startswith("benchmark_") for m in modules)
    code = ("import sys; sys.modules['torch'] = None\n"
            + "\n".join(f"import benchmarks.{m}" for m in modules))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr.strip().splitlines()[-1]

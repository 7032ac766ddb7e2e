"""The asv suite: ``benchmark_*.py`` and their shared set-up, ``common.py``.

Studies, profiles and device scripts live in ``scripts/``.
"""

try:
    import flowtie_fast  # noqa: F401
except ImportError:  # a source tree run with `asv run --python=same`, package not installed:
    import pathlib  # asv's benchmark processes see neither PYTHONPATH nor the checkout
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

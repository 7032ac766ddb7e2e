"""The documentation builds with Sphinx, warnings as errors, as CI builds it.

The API reference is generated from the package's docstrings (autodoc and
numpydoc, docs/api.rst), so a docstring that breaks the markup, or a public
name that moves without docs/api.rst following, fails here.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sphinx_build_has_no_warnings(tmp_path):
    import myst_parser  # noqa: F401  (the `test` extra installs the docs tools:
    import numpydoc  # noqa: F401      a missing one fails here, it does not skip)
    import sphinx  # noqa: F401

    out = tmp_path / "html"
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    for page in ("index", "getting-started", "conventions", "api", "models", "performance",
                 "evaluation", "reliability", "acquisitions"):
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api.html").read_text(encoding="utf-8")
    import flowtie_fast as ft

    missing = [name for name in ft.__all__ if f'id="flowtie_fast.{name}"' not in api]
    assert not missing, f"public names without an entry in docs/api.rst: {missing}"

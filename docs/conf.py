"""Sphinx configuration of the flowtie_fast documentation.

Build (as tests/test_docs_build.py and CI do)::

    sphinx-build -W --keep-going -b html docs /tmp/docs_html

Nothing is written into docs/: the API page uses autodoc directives, not
autosummary's generated stubs.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # the checkout, when the package is not installed

project = "flowtie_fast"
author = "flowtie_fast contributors"
copyright = "flowtie_fast contributors"  # noqa: A001 (Sphinx's name)

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown: GitHub-style heading anchors, so that links such as
# ``conventions.md#units`` resolve.
myst_heading_anchors = 3

# The optional dependencies (torch, LiberTEM) are imported for real where they
# are installed, as in CI; where they are not, autodoc would warn.
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections give the types, with units

# numpydoc renders the Parameters / Returns sections; the members are listed
# by autodoc's :members: in api.rst, so numpydoc does not list them again.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_static_path = []

# numpydoc's docstring validation, every check but those listed. Each
# exclusion says why; remove a code once no documented object fails it.
numpydoc_validation_checks = {
    "all",
    # House style, not defects: NumPy-style sections with units, no required
    # See Also / Examples / extended summary, summaries that may wrap and
    # name what a thing is ("The phase ...") rather than start with a verb,
    # closing quotes on the last line of text.
    "SA01", "EX01", "ES01", "SS05", "SS06", "GL02",
}


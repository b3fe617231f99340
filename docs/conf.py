"""Sphinx configuration for daskgru. Build: python -m sphinx -W -b html docs docs/_build/html"""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("KERAS_BACKEND", "numpy")

project = "daskgru"
author = "the daskgru developers"
copyright = "the daskgru developers"
try:
    from importlib.metadata import version as _version

    release = _version("daskgru")
except Exception:  # noqa: BLE001 - building from a checkout that is not installed
    release = "0.1.0"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# Notebooks are stored executed, with their outputs; the docs never run them.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
# Notebooks owned by several people use heading levels freely.
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

intersphinx_mapping = {}

html_theme = "pydata_sphinx_theme"
html_static_path = ["_static"]
html_title = "daskgru"
html_theme_options = {"navigation_with_keys": False}


def _escape_star_args(app, what, name, obj, options, lines):
    """Docstrings write shapes like ``(time, *batch dims, hidden)``; a bare ``*batch`` would
    start reST emphasis. Escape a star that follows "(" or ", " and precedes a name."""
    import re

    pat = re.compile(r"(?<=\()\*(?=\w)|(?<=, )\*(?=\w)")
    lines[:] = [pat.sub(r"\\*", line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _escape_star_args)

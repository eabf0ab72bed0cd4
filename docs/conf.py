"""Sphinx configuration: builds offline (no intersphinx), warnings are errors (`make docs`)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

project = "scgenvae"
author = "scgenvae developers"
copyright = f"{datetime.now(tz=UTC):%Y}, {author}"
release = _version("scgenvae")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxcontrib.bibtex",
]

# sources: markdown (MyST) pages and the tutorials/ notebooks (through the docs/tutorials link),
# rendered with the outputs committed from a full run; nothing is executed while building
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
myst_heading_anchors = 3
exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
    "tutorials/README.md",
]

autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "inherited-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True

bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

html_theme = "sphinx_book_theme"
html_title = "scgenvae"
html_theme_options = {
    "repository_url": "https://github.com/scverse/scgenvae",
    "use_repository_button": False,
}
html_static_path = []

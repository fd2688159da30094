"""Sphinx configuration: the user guide, the benchmark reports, the API.

Build from the repository root (10-20 s on two CPU cores; nothing is executed
but the imports that autodoc needs)::

  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The checkout's packages, not an installed copy of another checkout.
sys.path.insert(0, str(ROOT))

import graphsam_optax  # noqa: E402

project = "graphsam-optax"
release = graphsam_optax.__version__
copyright = "graphsam-optax authors"

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.mathjax",
  "sphinx.ext.napoleon",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

# Google docstrings; type hints are shown in the signature only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}

html_theme = "furo"
html_title = f"graphsam-optax {release}"


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """A NamedTuple's fields are documented by its ``Attributes:`` section."""
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return None


def setup(app):
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)

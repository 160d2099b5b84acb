"""Sphinx configuration of fastloss's documentation.

Build from this directory, with fastloss installed (``pip install ".[docs]"`` in the
repository root) or built in place and on ``PYTHONPATH``::

    sphinx-build -W -b html . _build/html          # the pages; warnings are errors
    sphinx-build -W -b doctest . _build/doctest    # run the examples and check their output

The API pages are made by autodoc from the docstrings of the installed ``fastloss``:
this file does not put the checkout on ``sys.path``, because a checkout whose C
extension was never built cannot be imported (its ImportError says so). torch is
optional: without it, ``fastloss.torch`` is imported against a stand-in
(``_ext/torch_stub.py``) so that its docstrings are still read, and the examples that
need torch are skipped by the doctest builder.
"""
import importlib.util
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

# Whether the real torch is importable, decided before any stand-in is installed.
HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_DASK = importlib.util.find_spec("dask") is not None   # fastloss.dask's examples
if not HAVE_TORCH:
    import torch_stub

    torch_stub.install()

import fastloss  # noqa: E402  (after the stand-in: fastloss.torch is imported by autodoc)

project = "fastloss"
author = "the fastloss developers"
copyright = "the fastloss developers"
version = release = fastloss.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "api_coverage",   # _ext/api_coverage.py: a public name no page documents is a warning
    "registry_table", # _ext/registry_table.py: the losses' table, from fastloss/_registry.py
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
default_role = "code"   # `x` is inline code, as in the docstrings
pygments_style = "sphinx"

# -- autodoc and numpydoc ----------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "none"          # the signatures carry no annotations
numpydoc_show_class_members = False  # the Module classes list no torch members
numpydoc_class_members_toctree = False

# Whose ``__all__`` must be documented, each name somewhere in the pages.
api_coverage_modules = ["fastloss", "fastloss.reference", "fastloss.torch",
                        "fastloss.torch.distributed", "fastloss.dask"]

# -- Markdown (BENCHMARKS.md is included as it is in the repository) ----------------------
myst_heading_anchors = 3

# -- doctest -----------------------------------------------------------------------------
# Every example starts from the same state: default options, NumPy's printing kept short,
# and have_torch telling the torch examples whether to run (``:skipif: not have_torch``).
doctest_global_setup = f"""
import numpy as np
import fastloss
from fastloss import reference
np.set_printoptions(precision=6, suppress=True)
have_torch = {HAVE_TORCH!r}
have_dask = {HAVE_DASK!r}
"""
doctest_global_cleanup = """
np.set_printoptions()
"""

# -- HTML --------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"fastloss {release}"
html_static_path = []
html_theme_options = {"description": "Fused loss kernels behind a NumPy API",
                      "page_width": "1100px"}

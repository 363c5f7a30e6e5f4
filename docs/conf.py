# Sphinx configuration of scree's documentation: the guides (quickstart, migration) and the API
# reference generated from the docstrings (autodoc). Built by scripts/docs.sh with warnings as
# errors, which the test command (scripts/test.sh) runs, so a docstring that does not render
# fails CI.
import importlib.util
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "python")))

project = "scree"
author = "the scree authors"
release = "0.1.0"
# napoleon: the Google-style "Args:" sections of some docstrings.
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
exclude_patterns = ["_build", "design.md"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
# Text in `single backticks` in the docstrings is code.
default_role = "code"
nitpicky = False
# Frameworks the modules import that this machine lacks are mocked, so the reference builds
# wherever scree itself does (their own docs describe them; ours only name them).
autodoc_mock_imports = [m for m in ("torch", "jax", "mlx", "transformers", "pyarrow", "datasets", "awkward")
                        if importlib.util.find_spec(m) is None]

"""Sphinx extension: every public name is documented.

The API pages list the functions one by one, so that each family reads in order with
its own introduction. The price is that a function added to fastloss could be missing
from the docs without anyone noticing. This extension warns, once the sources are read,
for every name in the ``__all__`` of the modules in ``api_coverage_modules`` (conf.py)
that no page documents; the build treats warnings as errors (``-W``), so the new name
has to be added to its page (``docs/api/*.rst``).
"""
import importlib

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _check(app, env):
    documented = set(env.get_domain("py").objects)
    for module_name in app.config.api_coverage_modules:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            full_name = f"{module_name}.{name}"
            if full_name not in documented:
                logger.warning("%s is public (in %s.__all__) but no page documents it; "
                               "add it to docs/api/", full_name, module_name,
                               type="api_coverage")
    return []


def setup(app):
    app.add_config_value("api_coverage_modules", [], "env")
    app.connect("env-check-consistency", _check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""A stand-in for torch, so that ``fastloss.torch`` can be documented without it.

torch is optional for fastloss and the docs are built in an environment that need not
have it. autodoc imports ``fastloss.torch`` to read its docstrings, and that module
subclasses torch's classes at import time (``torch.autograd.Function``,
``torch.nn.CrossEntropyLoss``, ...), which Sphinx's ``autodoc_mock_imports`` cannot
serve: its stand-ins are instances, not classes, and ``super()`` refuses them.

``install()`` puts in ``sys.modules`` the few torch modules that importing
``fastloss.torch`` touches, each name in them a plain class; nothing in them runs.
conf.py calls it only when ``import torch`` fails. If ``fastloss.torch`` starts to need
more of torch at import time, the docs build without torch fails at that import, and
this file is where to add it.
"""
import sys
import types


def _class(name, module, bases=(object,)):
    cls = type(name, bases, {"__module__": module})
    cls.__qualname__ = name
    return cls


def _module(name, attributes=None, *, lenient=True, base=object):
    """A module whose listed attributes are set and whose other names (when lenient)
    are classes made on first use, deriving from ``base``."""
    module = types.ModuleType(name, "Stand-in for the docs build (docs/_ext/torch_stub.py)")
    module.__dict__.update(attributes or {})

    def __getattr__(attribute):
        if not lenient or attribute.startswith("__"):
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        value = _class(attribute, name, (base,))
        setattr(module, attribute, value)
        return value

    module.__getattr__ = __getattr__
    return module


def _not_torch(*arguments, **keywords):
    raise RuntimeError("torch is not installed: this is the docs build's stand-in")


def install():
    """Register the stand-in modules under ``torch``; no-op if torch is already loaded."""
    if "torch" in sys.modules:
        return
    function_class = _class("Function", "torch.autograd")
    function_class.apply = classmethod(_not_torch)
    module_class = _class("Module", "torch.nn")
    modules = {
        "torch": _module("torch"),
        # getattr(torch._C, name, None) finds nothing, as in a torch without that name
        "torch._C": _module("torch._C", lenient=False),
        "torch.nn": _module("torch.nn", {"Module": module_class}, base=module_class),
        "torch.autograd": _module("torch.autograd", {"Function": function_class}),
        "torch.autograd.function": _module(
            "torch.autograd.function",
            {"Function": function_class, "once_differentiable": lambda function: function}),
        "torch.autograd.graph": _module("torch.autograd.graph"),
        "torch.distributed": _module("torch.distributed"),  # fastloss.torch.distributed
    }
    for name, module in modules.items():
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)

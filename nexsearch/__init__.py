"""nexsearch: neural architecture search over the NEXcepTion design space with SMAC.

``import nexsearch`` registers the paper's models with timm (``nexception_t``,
``nexception_s``, ``nexception_tp``, ``xception_nexsearch``, ``nexsearch_net``).

Importing is cheap: torch, timm and ConfigSpace load only when something needs them, so
``nexsearch --help``, ``nexsearch status`` and ``nexsearch space`` answer at once. The timm
registration runs the moment timm is imported (at once if it already is), through a post-import
hook on the import system's meta path, so ``import nexsearch, timm; timm.create_model("nexception_t")`` works in
either order. The public names below load their modules on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "SPACE": ("nexsearch.search_space.space", "SPACE"),
    "PRESETS": ("nexsearch.search_space.presets", "PRESETS"),
    "preset": ("nexsearch.search_space.presets", "preset"),
    "build_model": ("nexsearch.search_space.builder", "build_model"),
    "load_model": ("nexsearch.export", "load_model"),
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'nexsearch' has no attribute '{name}'")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def _register_with_timm(_timm: Any = None) -> None:
    importlib.import_module("nexsearch.search_space.timm_models")


class _AfterTimm:
    """A post-import hook for timm from the import system's own protocol (a meta path finder, PEP 451): when timm
    is first imported, its loader runs and then the registration. (wrapt's hook does the same, but importing wrapt
    imports asyncio: about 90 ms of every CLI start-up.)"""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # once; and find timm's own spec without this finder
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisterAfter(spec.loader)
        return spec


class _RegisterAfter:
    """timm's loader, and the registration once timm's module has run."""

    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _register_with_timm(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...: timm's loader answers
        return getattr(self.loader, name)


if "timm" in sys.modules:
    _register_with_timm()
elif not any(isinstance(f, _AfterTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimm())

"""nexsearch: neural architecture search over the NEXcepTion design space with SMAC.

``import nexsearch`` registers the paper's models with timm (``nexception_t``,
``nexception_s``, ``nexception_tp``, ``xception_nexsearch``, ``nexsearch_net``).

Importing is cheap: torch, timm and ConfigSpace load only when something needs them, so
``nexsearch --help``, ``nexsearch status`` and ``nexsearch space`` answer at once. The timm
registration runs the moment timm is imported (at once if it already is), through wrapt's
post-import hook, so ``import nexsearch, timm; timm.create_model("nexception_t")`` works in
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


if "timm" in sys.modules:
    _register_with_timm()
else:
    import wrapt

    wrapt.register_post_import_hook(_register_with_timm, "timm")

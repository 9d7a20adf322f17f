"""Matplotlib for files: a headless backend outside Jupyter (where the inline backend stays), chosen once,
on first use, before pyplot loads. Every module that draws (the analysis plots, the evaluation's plot) takes
pyplot here; a backend chosen later (``%matplotlib inline`` in a notebook) is left alone."""

from __future__ import annotations

from typing import Any

_CHOSEN: list[bool] = []  # whether this process chose its backend here already


def pyplot() -> Any:
    """``matplotlib.pyplot``, on the Agg backend unless a notebook chose its inline one."""
    import matplotlib

    if not _CHOSEN:
        _CHOSEN.append(True)
        backend = matplotlib.get_backend().lower()
        if "inline" not in backend and "ipykernel" not in backend:
            matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt

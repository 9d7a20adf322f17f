"""The design space, its presets, the network builder and timm registration."""

from nexsearch.search_space.space import build_space, count_configurations, describe, to_dict, validate

__all__ = ["SPACE", "build_space", "count_configurations", "describe", "to_dict", "validate"]


def __getattr__(name: str):
    if name == "SPACE":  # built on first use: importing ConfigSpace costs seconds
        from nexsearch.search_space import space

        return space.SPACE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

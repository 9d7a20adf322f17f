"""The design space, its presets, the network builder and timm registration."""

from nexsearch.search_space.space import SPACE, build_space, count_configurations, describe, to_dict, validate

__all__ = ["SPACE", "build_space", "count_configurations", "describe", "to_dict", "validate"]

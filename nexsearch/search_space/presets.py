"""Named configurations: the paper's NEXcepTion choices, the original Xception, NEXcepTion with InceptionNeXt's mixer."""

from __future__ import annotations

from typing import Any

from nexsearch.errors import UserError
from nexsearch.search_space.space import to_dict, validate

PRESETS: dict[str, dict[str, Any]] = {
    # Paper sec. 3-4: kernel 5, soft patchify stem, MaxBlurPool, inverted bottleneck x3, SE,
    # one GELU per block (in front of sepconv 2), BatchNorm behind sepconvs 1 and 2.
    "nexception": {
        "mixer": "depthwise", "kernel_size": 5, "stem": "patch", "downsample": "blurpool", "block": "bottleneck",
        "expansion": 3, "se": True, "act_type": "gelu", "norm_type": "batchnorm",
        "act_before_1": False, "act_before_2": True, "act_before_3": False,
        "norm_after_1": True, "norm_after_2": True, "norm_after_3": False,
    },
    # Chollet 2016: 3x3 kernels, two-conv stem, max pooling, Xception blocks, ReLU before and
    # BatchNorm after every separable conv, no SE. Equals the design space's default.
    "xception": {
        "mixer": "depthwise", "kernel_size": 3, "stem": "conv", "downsample": "maxpool", "block": "xception",
        "se": False, "act_type": "relu", "norm_type": "batchnorm",
        "act_before_1": True, "act_before_2": True, "act_before_3": True,
        "norm_after_1": True, "norm_after_2": True, "norm_after_3": True,
    },
    # Beyond the paper: NEXcepTion with InceptionNeXt's mixer (3x3 + 1x11 + 11x1 branches, identity).
    "nexception_i": {
        "mixer": "inception", "band_kernel": 11, "stem": "patch", "downsample": "blurpool", "block": "bottleneck",
        "expansion": 3, "se": True, "act_type": "gelu", "norm_type": "batchnorm",
        "act_before_1": False, "act_before_2": True, "act_before_3": False,
        "norm_after_1": True, "norm_after_2": True, "norm_after_3": False,
    },
}

# Full-size models of the paper (name -> preset, layout), as registered with timm.
MODELS: dict[str, tuple[str, str]] = {
    "nexception_t": ("nexception", "t"),
    "nexception_s": ("nexception", "s"),
    "nexception_tp": ("nexception", "tp"),
    "xception_nexsearch": ("xception", "xception"),
    "nexception_i_t": ("nexception_i", "t"),
    "nexception_i_tp": ("nexception_i", "tp"),
}


def preset_configuration(name: str):
    """The configuration of a named preset as a ``Configuration`` (checked here, where it enters)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return validate(PRESETS[name])


def preset(name: str) -> dict[str, Any]:
    """The configuration of a named preset (validated, as a plain dict)."""
    return to_dict(preset_configuration(name))

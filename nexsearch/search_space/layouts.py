"""Network layouts (the macro structure the configuration fills in) and their timm pretrained_cfg.

Plain data without torch, so that timm registration (``timm_models.py``) can read it while the
builder itself is still being imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    """Macro structure of a network; the configuration fills in the blocks."""

    name: str
    kind: str  # "isotropic" or "pyramid"
    input_size: int
    num_classes: int
    stem_width: int = 64  # isotropic
    entry_widths: tuple[int, ...] = ()  # isotropic: one downsampling block each
    middle_depth: int = 8  # isotropic: middle-flow blocks at width entry_widths[-1]
    exit_widths: tuple[int, ...] = (1024, 1536, 2048)  # downsampling block, sepconv, sepconv
    depths: tuple[int, ...] = ()  # pyramid
    dims: tuple[int, ...] = ()  # pyramid
    description: str = ""


LAYOUTS: dict[str, Layout] = {
    "proxy": Layout(
        "proxy", "isotropic", 32, 100, stem_width=64, entry_widths=(256,), middle_depth=4,
        exit_widths=(512, 768, 1024),
        description="reduced CIFAR-100 proxy: 1 entry block, 4 middle blocks (paper sec. 3)",
    ),
    "t": Layout(
        "t", "isotropic", 224, 1000, stem_width=96, entry_widths=(128, 256, 512), middle_depth=8,
        description="isotropic Tiny, paper table 5",
    ),
    "s": Layout(
        "s", "isotropic", 224, 1000, stem_width=96, entry_widths=(128, 256, 752), middle_depth=8,
        description="isotropic Small, paper table 6",
    ),
    "tp": Layout(
        "tp", "pyramid", 224, 1000, depths=(3, 4, 9, 3), dims=(96, 192, 384, 768),
        description="pyramid Tiny in ConvNeXt-T's layout, paper table 4",
    ),
    "xception": Layout(
        "xception", "isotropic", 299, 1000, stem_width=64, entry_widths=(128, 256, 728), middle_depth=8,
        description="the original Xception's widths at 299x299 (Chollet 2016)",
    ),
}


def model_cfg(layout: Layout, num_classes: int | None = None, in_chans: int = 3) -> dict[str, Any]:
    """timm's pretrained_cfg for a layout: input size, normalisation, classifier name."""
    return {
        "input_size": (in_chans, layout.input_size, layout.input_size),
        "num_classes": layout.num_classes if num_classes is None else num_classes,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.95,  # paper table 1: test crop ratio
        "interpolation": "bicubic",
        "first_conv": "stem.0",
        "classifier": "head.fc",
    }

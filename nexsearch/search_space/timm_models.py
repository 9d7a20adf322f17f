"""timm registration: ``timm.create_model("nexception_t")`` and friends after ``import nexsearch``.

Any configuration of the design space is reachable too:
``timm.create_model("nexsearch_net", config={...}, layout="t")``, where ``config`` is a
dict of hyperparameters or the path of a JSON file holding one (an export's sidecar works).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from nexsearch.search_space.layouts import LAYOUTS, model_cfg
from nexsearch.search_space.presets import MODELS, PRESETS

if TYPE_CHECKING:
    from nexsearch.search_space.builder import NexNet

default_cfgs = generate_default_cfgs(
    {name: model_cfg(LAYOUTS[layout]) for name, (_, layout) in MODELS.items()}
    | {"nexsearch_net": model_cfg(LAYOUTS["t"])}
)


def _create(variant: str, pretrained: bool, config: dict[str, Any], layout: str, **kwargs: Any) -> NexNet:
    if pretrained and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
        raise ValueError(
            f"no pretrained weights are published for {variant}: pass pretrained_cfg_overlay=dict(file=...) "
            "with an exported .safetensors file, or train it"
        )
    # not at import: this registration runs while the builder itself is still importing timm
    from nexsearch.search_space.builder import NexNet, checkpoint_filter_fn

    return build_model_with_cfg(
        NexNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, config=config, layout=layout, **kwargs
    )


def _preset_model(name: str, pretrained: bool, **kwargs: Any) -> NexNet:
    preset, layout = MODELS[name]
    return _create(name, pretrained, PRESETS[preset], layout, **kwargs)


@register_model
def nexception_t(pretrained: bool = False, **kwargs: Any) -> NexNet:
    """NEXcepTion-T: isotropic, 224x224 (paper table 5): 24.5M parameters."""
    return _preset_model("nexception_t", pretrained, **kwargs)


@register_model
def nexception_s(pretrained: bool = False, **kwargs: Any) -> NexNet:
    """NEXcepTion-S: isotropic, wider (paper table 6): 43.4M parameters."""
    return _preset_model("nexception_s", pretrained, **kwargs)


@register_model
def nexception_tp(pretrained: bool = False, **kwargs: Any) -> NexNet:
    """NEXcepTion-TP: pyramid in ConvNeXt-T's layout (paper table 4): 26.6M parameters."""
    return _preset_model("nexception_tp", pretrained, **kwargs)


@register_model
def xception_nexsearch(pretrained: bool = False, **kwargs: Any) -> NexNet:
    """The original Xception (299x299) built from the design space's default configuration."""
    return _preset_model("xception_nexsearch", pretrained, **kwargs)


@register_model
def nexception_i_t(pretrained: bool = False, **kwargs: Any) -> NexNet:
    """NEXcepTion-T with InceptionNeXt's mixer (band kernel 11) in every block; not in the paper."""
    return _preset_model("nexception_i_t", pretrained, **kwargs)


@register_model
def nexception_i_tp(pretrained: bool = False, **kwargs: Any) -> NexNet:
    """NEXcepTion-TP with InceptionNeXt's mixer (band kernel 11) in every block; not in the paper."""
    return _preset_model("nexception_i_tp", pretrained, **kwargs)


@register_model
def nexsearch_net(
    pretrained: bool = False, config: dict[str, Any] | str | Path | None = None, layout: str | None = None,
    **kwargs: Any,
) -> NexNet:
    """Any configuration of the design space in any layout (``proxy``, ``t``, ``s``, ``tp``, ``xception``).

    ``config`` is a dict or the path of a JSON file: a bare configuration, or an export's sidecar
    (whose layout and class count are then used unless given).
    """
    if config is None:
        raise ValueError("nexsearch_net needs config=: a dict of hyperparameters or a JSON file with one")
    weights_classes = None  # the class count of an export's weights, when config is its sidecar
    if isinstance(config, (str, Path)):  # an export's sidecar (config, size, num_classes) or a bare config
        data = json.loads(Path(config).read_text())
        if "config" in data:
            layout = layout or data.get("size")
            weights_classes = data.get("num_classes")
            data = data["config"]
        config = data
    layout = layout or "t"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    if kwargs.get("num_classes") is None:
        kwargs["num_classes"] = weights_classes or LAYOUTS[layout].num_classes
    if not kwargs.get("pretrained_cfg"):  # the registered cfg is layout t's: input size and classifier follow the layout
        kwargs["pretrained_cfg"] = model_cfg(LAYOUTS[layout], weights_classes)
    return _create("nexsearch_net", pretrained, dict(config), layout, **kwargs)

"""One builder: any configuration of the design space -> a ``torch.nn.Module``.

Three kinds of layout share the same blocks:

* ``proxy`` -- the reduced network searched on CIFAR-100 (32x32, 100 classes): stem, one
  downsampling block in the entry flow, four middle-flow blocks, the exit flow.
* ``t`` / ``s`` / ``xception`` -- isotropic full-size networks in Xception's layout: stem,
  three downsampling blocks, eight middle-flow blocks, exit flow (paper tables 5 and 6).
* ``tp`` -- pyramid: ConvNeXt-T's 4x4/4 stem, four stages of depth 3/4/9/3 and width
  96/192/384/768 joined by norm + 2x2/2 conv, the configured block in every stage, and a
  pooling/norm/linear head.

Layers come from ``timm.layers``; the structure follows timm's model files: small blocks,
one model class, ``forward_features`` / ``forward_head``.

The ``mixer`` is the spatial (depthwise) part of every separable convolution inside the blocks:
a k x k depthwise convolution, or timm's ``InceptionDWConv2d`` (InceptionNeXt: a 3x3, a 1 x b and a
b x 1 depthwise branch on 1/8 of the channels each, the rest passed through). The exit flow's two
3x3 separable convolutions are not part of a block and keep their 3x3 depthwise convolution.
``InceptionDWConv2d`` has no stride (its identity and band branches cannot downsample), so where a
block's separable convolution has stride 2 (``downsample: conv``) the inception mixer is replaced by
its square branch over all channels: a 3x3/2 depthwise convolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import (
    BlurPool2d,
    ClassifierHead,
    DropPath,
    LayerNorm2d,
    NormMlpClassifierHead,
    SEModule,
    SeparableConv2d,
    get_act_layer,
    make_divisible,
)
from timm.models import checkpoint_seq
from timm.models.inception_next import InceptionDWConv2d

from nexsearch.search_space.layouts import LAYOUTS, Layout, model_cfg
from nexsearch.search_space.space import DEFAULT_ACT, DEFAULT_NORM, N_POSITIONS, validate


@dataclass(frozen=True)
class Design:
    """A configuration resolved into the layer choices the blocks read."""

    mixer: str
    kernel_size: int | None  # mixer "depthwise"
    band_kernel: int | None  # mixer "inception"
    stem: str
    downsample: str
    block: str
    expansion: int
    se: bool
    acts: tuple[bool, ...]  # activation in front of sepconv i
    norms: tuple[bool, ...]  # normalization behind sepconv i
    act_layer: Callable[..., nn.Module]
    norm_layer: Callable[[int], nn.Module]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Design":
        c = dict(validate(config))
        act = c.get("act_type", DEFAULT_ACT)
        norm = c.get("norm_type", DEFAULT_NORM)
        return cls(
            mixer=str(c["mixer"]),
            kernel_size=int(c["kernel_size"]) if "kernel_size" in c else None,
            band_kernel=int(c["band_kernel"]) if "band_kernel" in c else None,
            stem=str(c["stem"]),
            downsample=str(c["downsample"]),
            block=str(c["block"]),
            expansion=int(c.get("expansion", 1)),
            se=bool(c["se"]),
            acts=tuple(bool(c[f"act_before_{i}"]) for i in range(1, N_POSITIONS + 1)),
            norms=tuple(bool(c[f"norm_after_{i}"]) for i in range(1, N_POSITIONS + 1)),
            act_layer=get_act_layer(str(act)),
            norm_layer=LayerNorm2d if norm == "layernorm" else nn.BatchNorm2d,
        )


def _separable(cin: int, cout: int, design: Design, stride: int = 1) -> nn.Module:
    """A separable conv whose depthwise part is the configured mixer (module docstring: stride 2)."""
    if design.mixer == "depthwise":
        return SeparableConv2d(cin, cout, design.kernel_size, stride=stride)
    conv = SeparableConv2d(cin, cout, 3, stride=stride)
    if stride == 1:
        conv.conv_dw = InceptionDWConv2d(cin, square_kernel_size=3, band_kernel_size=design.band_kernel,
                                         branch_ratio=1 / 8)
    return conv


def _sepconv_sequence(widths: Sequence[tuple[int, int]], design: Design, last_stride: int = 1) -> nn.Sequential:
    """Separable convs with the configured activations in front and norms behind."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(widths):
        if design.acts[i]:
            layers.append(design.act_layer())
        stride = last_stride if i == len(widths) - 1 else 1
        layers.append(_separable(cin, cout, design, stride))
        if design.norms[i]:
            layers.append(design.norm_layer(cout))
    return nn.Sequential(*layers)


def _squeeze_excite(channels: int, design: Design) -> nn.Module:
    # rd_ratio 1/16 (timm's SEModule default) gives the paper's parameter counts (Table 3).
    return SEModule(channels, rd_ratio=1 / 16, act_layer=design.act_layer) if design.se else nn.Identity()


def reflect_pad_keep_format(x: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
    """``F.pad(x, padding, mode="reflect")`` for NCHW input that keeps ``x``'s memory format.

    CUDA's reflection_pad2d makes its input contiguous, which takes a channels_last map out of
    channels_last (and the convolutions after it pay to convert back). This writes the same
    values into an output allocated in ``x``'s own format: the centre, then the reflected rows
    and columns.
    """
    left, right, top, bottom = padding
    n, c, h, w = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, top:top + h, left:left + w] = x
    if top:
        out[:, :, :top, left:left + w] = x[:, :, 1:top + 1].flip(2)
    if bottom:
        out[:, :, top + h:, left:left + w] = x[:, :, h - 1 - bottom:h - 1].flip(2)
    if left:
        out[:, :, :, :left] = out[:, :, :, left + 1:2 * left + 1].flip(3)
    if right:
        out[:, :, :, left + w:] = out[:, :, :, left + w - 1 - right:left + w - 1].flip(3)
    return out


class FormatKeepingBlurPool2d(BlurPool2d):
    """timm's ``BlurPool2d`` (same filter, same output) whose reflect pad keeps channels_last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode != "reflect":
            return super().forward(x)
        x = reflect_pad_keep_format(x, self.padding)
        channels = x.shape[1] if self.channels is None else self.channels
        weight = self.filt if self.channels is not None else self.filt.expand(channels, 1, self.filt_size,
                                                                              self.filt_size)
        return F.conv2d(x, weight, stride=self.stride, groups=channels)


def use_blurpool(model: nn.Module, keep_format: bool = True) -> nn.Module:
    """The BlurPool switch: every ``BlurPool2d`` of ``model`` becomes the format-keeping variant (or back).

    Works on any model built with timm's ``BlurPool2d`` (ours, timm's); returns ``model``.
    """
    cls = FormatKeepingBlurPool2d if keep_format else BlurPool2d
    for module in model.modules():
        if isinstance(module, BlurPool2d):
            module.__class__ = cls  # same buffers and attributes; only forward differs
    return model


class DownsampleBlock(nn.Module):
    """Two separable convs, a /2 downsampling, optional SE; 1x1/2 conv + norm shortcut."""

    def __init__(self, in_chs: int, out_chs: int, design: Design, grow_first: bool = True, drop_path: float = 0.0):
        super().__init__()
        mid = out_chs if grow_first else in_chs
        conv_stride = 2 if design.downsample == "conv" else 1
        self.convs = _sepconv_sequence([(in_chs, mid), (mid, out_chs)], design, conv_stride)
        if design.downsample == "maxpool":
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        elif design.downsample == "blurpool":
            # timm's BlurPool2d with a reflect pad that keeps channels_last: the same output, 1.34x NEXcepTion-T's
            # inference throughput on an H100 (docs/benchmarks.md); use_blurpool(model, False) restores timm's
            self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                      FormatKeepingBlurPool2d(out_chs, filt_size=3, stride=2))
        else:
            self.pool = nn.Identity()
        self.se = _squeeze_excite(out_chs, design)
        self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=2, bias=False), design.norm_layer(out_chs))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.se(self.pool(self.convs(x))))


class MiddleBlock(nn.Module):
    """Xception block (three C->C separable convs) or inverted bottleneck (C->rC->C->C); identity shortcut."""

    def __init__(self, chs: int, design: Design, drop_path: float = 0.0):
        super().__init__()
        if design.block == "bottleneck":
            wide = chs * design.expansion
            widths = [(chs, wide), (wide, chs), (chs, chs)]
        else:
            widths = [(chs, chs)] * 3
        self.convs = _sepconv_sequence(widths, design)
        self.se = _squeeze_excite(chs, design)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.se(self.convs(x)))


def _stem(in_chans: int, width: int, design: Design) -> nn.Sequential:
    if design.stem == "patch":  # 'soft' patchify: 2x2/2 conv, activation, norm (paper sec. 4, NEXcepTion-T)
        return nn.Sequential(nn.Conv2d(in_chans, width, 2, stride=2), design.act_layer(), design.norm_layer(width))
    half = make_divisible(width // 2, 8)
    return nn.Sequential(  # Xception: 3x3/2 conv, 3x3 conv, each with norm and activation
        nn.Conv2d(in_chans, half, 3, stride=2, padding=1, bias=False), design.norm_layer(half), design.act_layer(),
        nn.Conv2d(half, width, 3, padding=1, bias=False), design.norm_layer(width), design.act_layer(),
    )


def _isotropic(
    layout: Layout, design: Design, in_chans: int, scale: Callable[[int], int], depth: int | None, dpr_max: float
) -> tuple[nn.Module, nn.Sequential, int]:
    """Xception's macro structure: stem, downsampling entry blocks, middle flow, exit flow."""
    if depth is not None and not isinstance(depth, int):
        raise ValueError(f"layout '{layout.name}' takes one middle-flow depth (an int), got {depth!r}")
    n_middle = layout.middle_depth if depth is None else depth
    stem_w = scale(layout.stem_width)
    entry = [scale(c) for c in layout.entry_widths]
    exit_w = [scale(c) for c in layout.exit_widths]
    dpr = torch.linspace(0, dpr_max, len(entry) + n_middle + 1, device="cpu").tolist()  # cpu: also under a meta device
    blocks: list[nn.Module] = []
    cin = stem_w
    for i, cout in enumerate(entry):
        blocks.append(DownsampleBlock(cin, cout, design, drop_path=dpr[i]))
        cin = cout
    blocks += [MiddleBlock(cin, design, dpr[len(entry) + j]) for j in range(n_middle)]
    blocks.append(DownsampleBlock(cin, exit_w[0], design, grow_first=False, drop_path=dpr[-1]))
    # The exit flow's last two separable convs are 3x3 in Xception and in NEXcepTion alike.
    for a, b in zip(exit_w[:-1], exit_w[1:]):
        blocks += [SeparableConv2d(a, b, 3), design.norm_layer(b), design.act_layer()]
    return _stem(in_chans, stem_w, design), nn.Sequential(*blocks), exit_w[-1]


def _pyramid(
    layout: Layout, design: Design, in_chans: int, scale: Callable[[int], int], depth: Sequence[int] | None,
    dpr_max: float,
) -> tuple[nn.Module, nn.Sequential, int]:
    """ConvNeXt's macro structure: 4x4 patchify stem, four stages of middle blocks, norm + 2x2/2 conv between."""
    if depth is not None and (isinstance(depth, int) or len(depth) != len(layout.depths)):
        raise ValueError(f"layout '{layout.name}' takes {len(layout.depths)} per-stage depths, got {depth!r}")
    depths = layout.depths if depth is None else tuple(int(d) for d in depth)
    dims = [scale(d) for d in layout.dims]
    dpr = torch.linspace(0, dpr_max, sum(depths), device="cpu").tolist()  # cpu: also under a meta device
    stages, k = [], 0
    for i, (d, dim) in enumerate(zip(depths, dims)):
        layers: list[nn.Module] = []
        if i > 0:
            layers += [design.norm_layer(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2)]
        layers += [MiddleBlock(dim, design, dpr[k + j]) for j in range(d)]
        k += d
        stages.append(nn.Sequential(*layers))
    stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), design.norm_layer(dims[0]))
    return stem, nn.Sequential(*stages), dims[-1]


class NexNet(nn.Module):
    """A network of the NEXcepTion design space; timm-compatible model class.

    ``stem`` -> ``stages`` -> ``head`` (with ``head.fc``) in every layout, as in timm's own models:
    the isotropic layouts end in timm's ``ClassifierHead``, the pyramid in ``NormMlpClassifierHead``.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        layout: str | Layout = "proxy",
        num_classes: int | None = None,
        in_chans: int = 3,
        width: float = 1.0,
        depth: int | Sequence[int] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        **kwargs: Any,
    ):
        super().__init__()
        design = Design.from_config(config)  # raises ValueError before any layer is built
        if isinstance(layout, str):
            if layout not in LAYOUTS:
                raise ValueError(f"unknown layout '{layout}': choose one of {', '.join(LAYOUTS)}")
            layout = LAYOUTS[layout]
        if width <= 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        self.config = dict(config)
        self.layout = layout
        self.num_classes = layout.num_classes if num_classes is None else int(num_classes)
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        scale = (lambda c: make_divisible(c * width, 8)) if width != 1.0 else (lambda c: c)
        pyramid = layout.kind == "pyramid"
        self.stem, self.stages, self.num_features = (_pyramid if pyramid else _isotropic)(
            layout, design, in_chans, scale, depth, drop_path_rate
        )
        if pyramid:
            self.head = NormMlpClassifierHead(
                self.num_features, self.num_classes, pool_type=global_pool, drop_rate=drop_rate,
                norm_layer=design.norm_layer,
            )
        else:
            self.head = ClassifierHead(self.num_features, self.num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.default_cfg = self.pretrained_cfg = model_cfg(layout, self.num_classes, in_chans)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise learning-rate decay (``--layer-decay``)."""
        blocks = r"^stages\.(\d+)" if coarse or self.layout.kind != "pyramid" else r"^stages\.(\d+)\.(\d+)"
        return {"stem": r"^stem", "blocks": blocks}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of storing it (timm's ``--grad-checkpointing``)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights exported before the head was unified (isotropic ``fc.*``) load as ``head.fc.*``."""
    return {("head." + k if k.startswith("fc.") else k): v for k, v in state_dict.items()}


def build_model(config: Mapping[str, Any], layout: str | Layout = "proxy", **kwargs: Any) -> NexNet:
    """Build the network for ``config`` in ``layout`` (``proxy``, ``t``, ``s``, ``tp``, ``xception``).

    Keyword arguments: ``num_classes``, ``in_chans``, ``width`` (multiplier), ``depth``
    (middle blocks, or per-stage depths for ``tp``), ``drop_rate``, ``drop_path_rate``.
    """
    return NexNet(config, layout, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass at ``input_size`` (torch.utils.flop_counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2

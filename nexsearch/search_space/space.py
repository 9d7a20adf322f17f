"""The NEXcepTion design space (paper, section 3) as a ConfigSpace ``ConfigurationSpace``.

Every block of the network is a short sequence of depthwise-separable convolutions
(three in a middle-flow block, two in a downsampling block). Positions are numbered by
the convolution they touch: ``act_before_i`` puts an activation in front of convolution
*i*, ``norm_after_i`` a normalization behind it. Downsampling blocks use positions 1-2.
With this numbering Xception is "activation before every conv, norm after every conv"
and NEXcepTion is "activation before conv 2 only, norm after convs 1 and 2".

Adding a design dimension means adding it here (with its conditions) and reading it in
``builder.py``; nothing else in nexsearch names hyperparameters.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from ConfigSpace import (
    Categorical,
    Configuration,
    ConfigurationSpace,
    EqualsCondition,
    OrConjunction,
)

N_POSITIONS = 3  # separable convolutions in a middle-flow block

ACTIVATIONS = ("relu", "gelu", "elu", "celu")
NORMS = ("batchnorm", "layernorm")

# One line per design dimension, shown by `nexsearch space`.
DESCRIPTIONS: dict[str, str] = {
    "mixer": "spatial part of every separable conv in the blocks: depthwise k x k convolution, or inception "
    "(InceptionNeXt: 3x3, 1xb and bx1 depthwise branches on 1/8 of the channels each, the rest identity; "
    "a stride-2 conv keeps a 3x3/2 depthwise conv)",
    "kernel_size": "kernel size of the depthwise convolutions in every block (mixer: depthwise)",
    "band_kernel": "length b of the inception mixer's 1xb and bx1 band kernels",
    "stem": "conv: Xception's 3x3/2 + 3x3 convolutions; patch: 'soft' 2x2/2 patchify",
    "downsample": "maxpool 3x3/2; conv: the block's last conv has stride 2; "
    "blurpool: max pool 3x3/1 then anti-aliased blur pool /2 (MaxBlurPool)",
    "block": "middle-flow block: xception (3 convs, constant width) or inverted bottleneck",
    "expansion": "bottleneck expansion ratio: conv 1 expands C -> ratio*C, conv 2 projects back",
    "se": "squeeze-and-excitation at the end of every block",
    "act_type": "activation function (also used by the stem and the exit flow)",
    "norm_type": "normalization layer (also used by the stem, the shortcuts and the exit flow)",
}
for _i in range(1, N_POSITIONS + 1):
    DESCRIPTIONS[f"act_before_{_i}"] = f"activation in front of separable conv {_i} of a block"
    DESCRIPTIONS[f"norm_after_{_i}"] = f"normalization behind separable conv {_i} of a block"

# Used outside blocks when the block-level choice is inactive (no position carries one).
DEFAULT_ACT = "relu"
DEFAULT_NORM = "batchnorm"


def build_space(seed: int | None = None) -> ConfigurationSpace:
    """Return the design space. Its default configuration is the original Xception."""
    cs = ConfigurationSpace(name="nexception", seed=seed)
    mixer = Categorical("mixer", ["depthwise", "inception"], default="depthwise")
    # Categorical, not ordinal: both are conditional on the mixer, and DeepCAVE 1.4.1 cannot impute an
    # inactive ordinal hyperparameter (nor expansion's, below).
    kernel = Categorical("kernel_size", [3, 5, 7, 9], default=3)
    band = Categorical("band_kernel", [7, 11], default=11)
    stem = Categorical("stem", ["conv", "patch"], default="conv")
    down = Categorical("downsample", ["maxpool", "conv", "blurpool"], default="maxpool")
    block = Categorical("block", ["xception", "bottleneck"], default="xception")
    # Categorical, not ordinal: DeepCAVE 1.4.1 cannot impute an inactive ordinal hyperparameter.
    expansion = Categorical("expansion", [2, 3, 4], default=3)
    se = Categorical("se", [False, True], default=False)
    act_type = Categorical("act_type", list(ACTIVATIONS), default="relu")
    norm_type = Categorical("norm_type", list(NORMS), default="batchnorm")
    acts = [Categorical(f"act_before_{i}", [False, True], default=True) for i in range(1, N_POSITIONS + 1)]
    norms = [Categorical(f"norm_after_{i}", [False, True], default=True) for i in range(1, N_POSITIONS + 1)]
    cs.add([mixer, kernel, band, stem, down, block, expansion, se, act_type, norm_type, *acts, *norms])
    cs.add(
        [
            EqualsCondition(kernel, mixer, "depthwise"),
            EqualsCondition(band, mixer, "inception"),
            EqualsCondition(expansion, block, "bottleneck"),
            OrConjunction(*[EqualsCondition(act_type, a, True) for a in acts]),
            OrConjunction(*[EqualsCondition(norm_type, n, True) for n in norms]),
        ]
    )
    return cs


SPACE = build_space()


def _plain(value: Any) -> Any:
    """numpy scalars (as ConfigSpace hands them out) -> plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_dict(config: Configuration | Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as a plain, JSON-serialisable dict of its active hyperparameters."""
    return {str(k): _plain(v) for k, v in dict(config).items()}


def validate(values: Mapping[str, Any], space: ConfigurationSpace = SPACE) -> Configuration:
    """Check ``values`` against the space and return a ``Configuration``.

    Raises ``ValueError`` naming the offending hyperparameter for unknown names, values
    outside a domain, values given for inactive hyperparameters and missing active ones.
    No torch code runs before this succeeds.
    """
    if isinstance(values, Configuration):
        values = dict(values)
    if not isinstance(values, Mapping):
        raise ValueError(f"a configuration must be a mapping of hyperparameter names to values, got {type(values).__name__}")
    values = {str(k): _plain(v) for k, v in values.items()}
    names = list(space.keys())
    for key in values:
        if key not in space:
            raise ValueError(f"unknown hyperparameter '{key}': the design space has {', '.join(names)}")
    for key, value in values.items():
        hp = space[key]
        choices = getattr(hp, "choices", None) or getattr(hp, "sequence", None)
        plain_choices = [_plain(c) for c in choices]
        if value not in plain_choices or type(value) is not type(plain_choices[plain_choices.index(value)]):
            raise ValueError(f"hyperparameter '{key}': {value!r} is not one of {list(_plain(c) for c in choices)}")
    # Walk the hyperparameters in topological order so parents are checked before children.
    for name in names:
        active = _is_active(space, name, values)
        if active and name not in values:
            raise ValueError(f"hyperparameter '{name}' is missing: it is active in this configuration")
        if not active and name in values:
            raise ValueError(
                f"hyperparameter '{name}' must not be set: its condition is not met "
                f"({_condition_text(space, name)})"
            )
    return Configuration(space, values=values)


def _is_active(space: ConfigurationSpace, name: str, values: Mapping[str, Any]) -> bool:
    """Active iff every condition on ``name`` holds; ``values`` holds only active values."""
    return all(_holds(cond, values) for cond in space.parent_conditions_of[name])


def _holds(cond: Any, values: Mapping[str, Any]) -> bool:
    if isinstance(cond, OrConjunction):
        return any(_holds(c, values) for c in cond.components)
    if isinstance(cond, EqualsCondition):
        return cond.parent.name in values and values[cond.parent.name] == _plain(cond.value)
    raise NotImplementedError(f"condition type {type(cond).__name__} is not supported by nexsearch's validator")


def _condition_text(space: ConfigurationSpace, name: str) -> str:
    parts = []
    for cond in space.parent_conditions_of[name]:
        comps = cond.components if isinstance(cond, OrConjunction) else [cond]
        parts.append(" or ".join(f"{c.parent.name} == {_plain(c.value)!r}" for c in comps))
    return " and ".join(parts)


def count_configurations(space: ConfigurationSpace = SPACE) -> int:
    """Exact number of distinct valid configurations, respecting conditions.

    Hyperparameters that some condition depends on are enumerated; every other one
    contributes a factor of its domain size when active. Exact for categorical and
    ordinal spaces without forbidden clauses (the nexsearch space); raises otherwise.
    """
    if space.forbidden_clauses:
        raise NotImplementedError("exact counting with forbidden clauses is not implemented")
    names = list(space.keys())
    domain = {}
    for name in names:
        hp = space[name]
        choices = getattr(hp, "choices", None) or getattr(hp, "sequence", None)
        if choices is None:
            raise ValueError(f"hyperparameter '{name}' is not discrete: the space is infinite")
        domain[name] = [_plain(c) for c in choices]
    parents = [n for n in names if any(p.name == n for m in names for p in space.parents_of[m])]

    def count(i: int, values: dict[str, Any]) -> int:
        if i == len(parents):
            return math.prod(len(domain[n]) for n in names if n not in parents and _is_active(space, n, values))
        name = parents[i]
        if not _is_active(space, name, values):
            return count(i + 1, values)
        return sum(count(i + 1, {**values, name: v}) for v in domain[name])

    return count(0, {})


def describe(space: ConfigurationSpace = SPACE) -> dict[str, Any]:
    """The space as a JSON-ready summary: size and each dimension with values and conditions."""
    dims = []
    for name in space.keys():
        hp = space[name]
        choices = getattr(hp, "choices", None) or getattr(hp, "sequence", None)
        dims.append(
            {
                "name": name,
                "values": [_plain(c) for c in choices],
                "default": _plain(hp.default_value),
                "condition": _condition_text(space, name) or None,
                "description": DESCRIPTIONS.get(name, ""),
            }
        )
    return {
        "size": count_configurations(space),
        "upper_bound": int(space.estimate_size()),
        "hyperparameters": [d["name"] for d in dims],
        "dimensions": dims,
    }

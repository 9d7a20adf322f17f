"""The NEXcepTion design space (paper, section 3): plain-data dimensions and their ConfigSpace ``ConfigurationSpace``.

Every block of the network is a short sequence of depthwise-separable convolutions
(three in a middle-flow block, two in a downsampling block). Positions are numbered by
the convolution they touch: ``act_before_i`` puts an activation in front of convolution
*i*, ``norm_after_i`` a normalization behind it. Downsampling blocks use positions 1-2.
With this numbering Xception is "activation before every conv, norm after every conv"
and NEXcepTion is "activation before conv 2 only, norm after convs 1 and 2".

Adding a design dimension means adding one ``Dimension`` to ``DIMENSIONS`` here (values,
default, description, the condition under which it is active) and reading it in
``builder.py``; nothing else in nexsearch names hyperparameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ConfigSpace import Configuration, ConfigurationSpace

N_POSITIONS = 3  # separable convolutions in a middle-flow block

ACTIVATIONS = ("relu", "gelu", "elu", "celu")
NORMS = ("batchnorm", "layernorm")

# Used outside blocks when the block-level choice is inactive (no position carries one).
DEFAULT_ACT = "relu"
DEFAULT_NORM = "batchnorm"


@dataclass(frozen=True)
class Dimension:
    """One design dimension as plain data: ``build_space`` turns these into ConfigSpace objects.

    ``active_when`` lists (parent, value) pairs; the dimension is active when any of them holds
    (an empty tuple: always active). ``nexsearch space`` reads these without importing ConfigSpace.
    """

    name: str
    values: tuple[Any, ...]
    default: Any
    description: str = ""
    ordinal: bool = False
    active_when: tuple[tuple[str, Any], ...] = ()


_ACTS = tuple(f"act_before_{i}" for i in range(1, N_POSITIONS + 1))
_NORMS = tuple(f"norm_after_{i}" for i in range(1, N_POSITIONS + 1))

# The design space, parents before children. Its defaults are the original Xception.
DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("mixer", ("depthwise", "inception"), "depthwise", "spatial part of every separable conv in the "
              "blocks: depthwise k x k convolution, or inception (InceptionNeXt: 3x3, 1xb and bx1 depthwise branches "
              "on 1/8 of the channels each, the rest identity; a stride-2 conv keeps a 3x3/2 depthwise conv)"),
    # kernel_size and band_kernel (like expansion below) are categorical, not ordinal: they are
    # conditional, and DeepCAVE 1.4.1 cannot impute an inactive ordinal hyperparameter.
    Dimension("kernel_size", (3, 5, 7, 9), 3, "kernel size of the depthwise convolutions in every block "
              "(mixer: depthwise)", active_when=(("mixer", "depthwise"),)),
    Dimension("band_kernel", (7, 11), 11, "length b of the inception mixer's 1xb and bx1 band kernels",
              active_when=(("mixer", "inception"),)),
    Dimension("stem", ("conv", "patch"), "conv", "conv: Xception's 3x3/2 + 3x3 convolutions; patch: 'soft' 2x2/2 "
              "patchify"),
    Dimension("downsample", ("maxpool", "conv", "blurpool"), "maxpool", "maxpool 3x3/2; conv: the block's last conv "
              "has stride 2; blurpool: max pool 3x3/1 then anti-aliased blur pool /2 (MaxBlurPool)"),
    Dimension("block", ("xception", "bottleneck"), "xception", "middle-flow block: xception (3 convs, constant "
              "width) or inverted bottleneck"),
    Dimension("expansion", (2, 3, 4), 3, "bottleneck expansion ratio: conv 1 expands C -> ratio*C, conv 2 projects "
              "back", active_when=(("block", "bottleneck"),)),
    Dimension("se", (False, True), False, "squeeze-and-excitation at the end of every block"),
    Dimension("act_type", ACTIVATIONS, "relu", "activation function (also used by the stem and the exit flow)",
              active_when=tuple((a, True) for a in _ACTS)),
    Dimension("norm_type", NORMS, "batchnorm", "normalization layer (also used by the stem, the shortcuts and the "
              "exit flow)", active_when=tuple((n, True) for n in _NORMS)),
    *(Dimension(a, (False, True), True, f"activation in front of separable conv {i} of a block")
      for i, a in enumerate(_ACTS, 1)),
    *(Dimension(n, (False, True), True, f"normalization behind separable conv {i} of a block")
      for i, n in enumerate(_NORMS, 1)),
)

# One line per design dimension, shown by `nexsearch space` and in model cards.
DESCRIPTIONS: dict[str, str] = {d.name: d.description for d in DIMENSIONS}


def build_space(seed: int | None = None) -> ConfigurationSpace:
    """Return the design space as a ConfigSpace ``ConfigurationSpace``. Its default configuration is Xception."""
    from ConfigSpace import Categorical, ConfigurationSpace, EqualsCondition, OrConjunction, OrdinalHyperparameter

    cs = ConfigurationSpace(name="nexception", seed=seed)
    hps = {
        d.name: OrdinalHyperparameter(d.name, list(d.values), default_value=d.default) if d.ordinal
        else Categorical(d.name, list(d.values), default=d.default)
        for d in DIMENSIONS
    }
    cs.add(list(hps.values()))
    conditions = []
    for d in DIMENSIONS:
        equals = [EqualsCondition(hps[d.name], hps[parent], value) for parent, value in d.active_when]
        if equals:
            conditions.append(equals[0] if len(equals) == 1 else OrConjunction(*equals))
    cs.add(conditions)
    return cs


_SPACE: ConfigurationSpace | None = None


def __getattr__(name: str) -> Any:
    """``SPACE``, the design space, is built on first use (importing ConfigSpace costs seconds)."""
    global _SPACE
    if name == "SPACE":
        if _SPACE is None:
            _SPACE = build_space()
        return _SPACE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain(value: Any) -> Any:
    """numpy scalars (as ConfigSpace hands them out) -> plain Python values."""
    return value.item() if hasattr(value, "item") and type(value).__module__ == "numpy" else value


def dimensions_of(space: ConfigurationSpace | Sequence[Dimension] | None = None) -> tuple[Dimension, ...]:
    """The dimensions of a ConfigSpace space (in its order, parents first), or nexsearch's own (``None``)."""
    if space is None:
        return DIMENSIONS
    if not hasattr(space, "parent_conditions_of"):
        return tuple(space)
    dims = []
    for name in space.keys():
        hp = space[name]
        choices = getattr(hp, "choices", None) or getattr(hp, "sequence", None)
        if choices is None:
            raise ValueError(f"hyperparameter '{name}' is not discrete: the space is infinite")
        when: list[tuple[str, Any]] = []
        conds = space.parent_conditions_of[name]
        if len(conds) > 1:
            raise NotImplementedError(f"'{name}' has several conditions: only one (or one OR of equalities) is supported")
        for cond in conds:
            for c in getattr(cond, "components", [cond]):
                if not hasattr(c, "value") or type(c).__name__ != "EqualsCondition":
                    raise NotImplementedError(f"condition type {type(c).__name__} is not supported by nexsearch")
                when.append((c.parent.name, _plain(c.value)))
        dims.append(Dimension(name, tuple(_plain(c) for c in choices), _plain(hp.default_value),
                              DESCRIPTIONS.get(name, ""), hasattr(hp, "sequence"), tuple(when)))
    return tuple(dims)


def _is_active(dim: Dimension, values: Mapping[str, Any]) -> bool:
    """Active iff some (parent, value) pair holds; ``values`` holds only active values."""
    return not dim.active_when or any(p in values and values[p] == v for p, v in dim.active_when)


def _condition_text(dim: Dimension) -> str:
    return " or ".join(f"{p} == {v!r}" for p, v in dim.active_when)


def to_dict(config: Configuration | Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as a plain, JSON-serialisable dict of its active hyperparameters."""
    return {str(k): _plain(v) for k, v in dict(config).items()}


def validate(values: Mapping[str, Any], space: ConfigurationSpace | None = None) -> Configuration:
    """Check ``values`` against the space and return a ``Configuration``: where a configuration enters
    (the CLI, SMAC, an export, a loaded file). A ``Configuration`` of this space passes as it is, so
    code that receives one (the trainer, the builder) does not check it again.

    Raises ``ValueError`` naming the offending hyperparameter for unknown names, values
    outside a domain, values given for inactive hyperparameters and missing active ones.
    No torch code runs before this succeeds.
    """
    from ConfigSpace import Configuration

    space_ = __getattr__("SPACE") if space is None else space
    if isinstance(values, Configuration):
        if values.config_space == space_:
            return values  # ConfigSpace checked it when it was made: a configuration is validated once
        values = dict(values)
    return _check(values, space)


def _check(values: Any, space: ConfigurationSpace | None) -> Configuration:
    """The check behind :func:`validate`, for a mapping: every name, value and condition."""
    from ConfigSpace import Configuration

    dims = {d.name: d for d in dimensions_of(space)}
    space = __getattr__("SPACE") if space is None else space
    if not isinstance(values, Mapping):
        raise ValueError(f"a configuration must be a mapping of hyperparameter names to values, got {type(values).__name__}")
    values = {str(k): _plain(v) for k, v in values.items()}
    for key, value in values.items():
        if key not in dims:
            raise ValueError(f"unknown hyperparameter '{key}': the design space has {', '.join(dims)}")
        choices = list(dims[key].values)
        if value not in choices or type(value) is not type(choices[choices.index(value)]):
            raise ValueError(f"hyperparameter '{key}': {value!r} is not one of {choices}")
    for dim in dims.values():  # parents before children
        active = _is_active(dim, values)
        if active and dim.name not in values:
            raise ValueError(f"hyperparameter '{dim.name}' is missing: it is active in this configuration")
        if not active and dim.name in values:
            raise ValueError(
                f"hyperparameter '{dim.name}' must not be set: its condition is not met ({_condition_text(dim)})"
            )
    return Configuration(space, values=values)


def count_configurations(space: ConfigurationSpace | Sequence[Dimension] | None = None) -> int:
    """Exact number of distinct valid configurations, respecting conditions.

    Dimensions that some condition depends on are enumerated; every other one contributes a
    factor of its domain size when active. Exact for categorical and ordinal spaces without
    forbidden clauses (the nexsearch space); raises otherwise.
    """
    if getattr(space, "forbidden_clauses", None):
        raise NotImplementedError("exact counting with forbidden clauses is not implemented")
    dims = dimensions_of(space)
    parent_names = {p for d in dims for p, _ in d.active_when}
    parents = [d for d in dims if d.name in parent_names]
    leaves = [d for d in dims if d.name not in parent_names]

    def count(i: int, values: dict[str, Any]) -> int:
        if i == len(parents):
            return math.prod(len(d.values) for d in leaves if _is_active(d, values))
        dim = parents[i]
        if not _is_active(dim, values):
            return count(i + 1, values)
        return sum(count(i + 1, {**values, dim.name: v}) for v in dim.values)

    return count(0, {})


def describe(space: ConfigurationSpace | Sequence[Dimension] | None = None) -> dict[str, Any]:
    """The space as a JSON-ready summary: size and each dimension with values and conditions."""
    dims = dimensions_of(space)
    return {
        "size": count_configurations(dims),
        "upper_bound": math.prod(len(d.values) for d in dims),  # ConfigSpace's estimate_size: conditions ignored
        "hyperparameters": [d.name for d in dims],
        "dimensions": [
            {"name": d.name, "values": list(d.values), "default": d.default,
             "condition": _condition_text(d) or None, "description": d.description}
            for d in dims
        ],
    }

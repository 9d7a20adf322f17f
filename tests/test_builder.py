import pytest
import timm
import torch
from timm.models.inception_next import InceptionDWConv2d

import nexsearch  # noqa: F401  (registers the timm models)
from nexsearch.search_space.builder import LAYOUTS, build_model, count_macs, count_params
from nexsearch.search_space.presets import preset
from nexsearch.search_space.space import build_space, to_dict

TINY = dict(width=0.125, num_classes=10)


def test_random_configurations_build_and_train_step():
    space = build_space(seed=0)
    configs = space.sample_configuration(100)
    assert {c["mixer"] for c in configs} == {"depthwise", "inception"}
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    for cfg in configs:
        model = build_model(to_dict(cfg), "proxy", **TINY).to(memory_format=torch.channels_last)
        out = model(x)
        assert out.shape == (2, 10)
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), to_dict(cfg)


def _structure(model):
    return [(name, type(m).__name__, tuple(p.shape for p in m.parameters(recurse=False))) for name, m in model.named_modules()]


ALTERNATIVES = {
    "mixer": "inception", "kernel_size": 7, "stem": "patch", "downsample": "blurpool", "block": "bottleneck", "se": True,
    "act_type": "gelu", "norm_type": "layernorm", "act_before_1": False, "act_before_3": False,
    "norm_after_1": False, "norm_after_3": False,
}


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_one_dimension_changes_the_module(name):
    base = preset("xception")
    changed = {**base, name: ALTERNATIVES[name]}
    if name == "block":
        changed["expansion"] = 3
    if name == "mixer":
        del changed["kernel_size"]
        changed["band_kernel"] = 11
    a, b = build_model(base, "proxy", **TINY), build_model(changed, "proxy", **TINY)
    assert _structure(a) != _structure(b)


def test_expansion_changes_width():
    cfg = preset("nexception")
    sizes = [count_params(build_model({**cfg, "expansion": r}, "proxy", **TINY)) for r in (2, 3, 4)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_downsample_conv_has_no_pool_and_same_output():
    cfg = {**preset("nexception"), "downsample": "conv"}
    m = build_model(cfg, "proxy", **TINY)
    assert not any(isinstance(x, (torch.nn.MaxPool2d, timm.layers.BlurPool2d)) for x in m.modules())
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _inception(**changes):
    cfg = {k: v for k, v in preset("nexception").items() if k != "kernel_size"}
    return {**cfg, "mixer": "inception", "band_kernel": 7, **changes}


def _separable_convs(model):
    return [m for m in model.modules() if isinstance(m, timm.layers.SeparableConv2d)]


def test_inception_mixer_is_timms_layer_in_every_block_but_not_the_exit_flow():
    model = build_model(_inception(), "proxy", **TINY)
    seps = _separable_convs(model)
    # proxy: 1 entry + 4 middle + 1 exit downsampling block (2 + 4 x 3 + 2 sepconvs), then the exit flow's 2
    assert len(seps) == 18
    for sep in seps[:16]:
        mixer = sep.conv_dw
        assert type(mixer) is InceptionDWConv2d
        c = sep.conv_pw.in_channels
        gc = c // 8  # timm's branch_ratio 1/8: square, 1 x b and b x 1 branches, the rest identity
        assert mixer.split_indexes == (c - 3 * gc, gc, gc, gc)
        assert mixer.dwconv_hw.kernel_size == (3, 3)
        assert mixer.dwconv_w.kernel_size == (1, 7) and mixer.dwconv_h.kernel_size == (7, 1)
        assert mixer.dwconv_hw.groups == gc
    for sep in seps[16:]:  # the exit flow keeps its 3x3 depthwise convs
        assert isinstance(sep.conv_dw, torch.nn.Conv2d) and sep.conv_dw.kernel_size == (3, 3)
    band11 = build_model(_inception(band_kernel=11), "proxy", **TINY)
    assert _separable_convs(band11)[0].conv_dw.dwconv_w.kernel_size == (1, 11)
    assert not any(isinstance(m, InceptionDWConv2d) for m in build_model(preset("nexception"), "proxy", **TINY).modules())


def test_inception_mixer_at_stride_2_is_a_3x3_depthwise_conv():
    model = build_model(_inception(downsample="conv"), "proxy", **TINY)
    strided = [s for s in _separable_convs(model) if getattr(s.conv_dw, "stride", None) == (2, 2)]
    assert len(strided) == 2  # the last sepconv of each downsampling block
    for sep in strided:
        dw = sep.conv_dw
        assert isinstance(dw, torch.nn.Conv2d) and dw.kernel_size == (3, 3) and dw.groups == dw.in_channels
    assert sum(isinstance(m, InceptionDWConv2d) for m in model.modules()) == 14
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# Before the mixer existed (issue 15): the presets' models must not change.
PRESET_PARAMS = {"nexception_t": 24_544_224, "nexception_s": 43_385_904, "nexception_tp": 26_558_216,
                 "xception_nexsearch": 22_855_952}


@pytest.mark.parametrize("name", list(PRESET_PARAMS))
def test_preset_parameter_counts_unchanged(name):
    assert count_params(timm.create_model(name)) == PRESET_PARAMS[name]


def test_inception_models_registered_with_timm():
    for name, layout in (("nexception_i_t", "t"), ("nexception_i_tp", "tp")):
        model = timm.create_model(name)
        mixers = [m for m in model.modules() if isinstance(m, InceptionDWConv2d)]
        assert mixers and all(m.dwconv_w.kernel_size == (1, 11) for m in mixers)
        assert model.layout.name == layout and model.config == preset("nexception_i")
        # the mixer is lighter than NEXcepTion's 5x5 depthwise convs
        assert count_params(model) < PRESET_PARAMS[name.replace("_i", "")]


# Paper table 3 (Xception: 22.9M, the Xception paper's own count).
PAPER_PARAMS = {"nexception_t": 24.5e6, "nexception_s": 43.4e6, "nexception_tp": 26.6e6, "xception_nexsearch": 22.9e6}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_full_size_parameter_counts_match_paper(name):
    model = timm.create_model(name)
    n = count_params(model)
    assert abs(n - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01, n


def test_xception_preset_equals_timm_legacy_xception_count():
    assert count_params(timm.create_model("xception_nexsearch")) == count_params(timm.create_model("legacy_xception"))


@pytest.mark.parametrize("name, size, paper", [("nexception_t", 224, 4.7e9), ("nexception_s", 224, 8.5e9),
                                               ("nexception_tp", 224, 4.5e9), ("xception_nexsearch", 299, 8.4e9)])
def test_macs_match_paper_table_3(name, size, paper):
    # flop_counter counts convolutions and matmuls only (no norms, activations, pooling, SE gate),
    # so it reads a little low; Xception's padded stem makes it read slightly high (README, Models).
    macs = count_macs(timm.create_model(name), size)
    assert abs(macs - paper) / paper < 0.05


def test_timm_kwargs_and_shapes():
    m = timm.create_model("nexception_tp", num_classes=7, drop_path_rate=0.1, width=0.25)
    assert m.num_classes == 7
    assert any(isinstance(x, timm.layers.DropPath) for x in m.modules())
    m.eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    m.reset_classifier(3)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert m.pretrained_cfg["input_size"] == (3, 224, 224)


def test_timm_generic_entrypoint_and_pretrained_refused():
    m = timm.create_model("nexsearch_net", config=preset("nexception"), layout="proxy", width=0.125)
    assert m.num_classes == LAYOUTS["proxy"].num_classes
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("nexception_t", pretrained=True)


def test_invalid_configuration_raises_before_torch(monkeypatch):
    import nexsearch.search_space.builder as builder

    def boom(*a, **k):
        raise AssertionError("a layer was built before the configuration was checked")

    monkeypatch.setattr(builder, "SeparableConv2d", boom)
    with pytest.raises(ValueError, match="'kernel_size'"):
        build_model({**preset("nexception"), "kernel_size": 11})
    with pytest.raises(ValueError, match="unknown layout"):
        build_model(preset("nexception"), "huge")


@pytest.mark.parametrize("layout", ["proxy", "tp"])
def test_timm_train_script_hooks(layout):
    """What timm's train.py calls: grad checkpointing, layer-decay groups, one head with .fc in both layouts."""
    from timm.models import group_parameters

    m = build_model(preset("nexception"), layout, width=0.125, num_classes=5,
                    depth=(1, 1, 1, 1) if layout == "tp" else 2)
    assert m.get_classifier() is m.head.fc and m.pretrained_cfg["classifier"] == "head.fc"
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    plain = m(x).sum()
    plain.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    torch.manual_seed(0)
    ckpt = m(x).sum()
    ckpt.backward()
    assert torch.allclose(plain, ckpt, atol=1e-5)
    for n, p in m.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-4), n
    groups = group_parameters(m, m.group_matcher())
    assert sum(len(names) for names in groups.values()) == len(list(m.parameters()))
    assert len(groups) > 2  # stem, several block groups, the head
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)


def test_depth_of_the_wrong_form_is_refused():
    with pytest.raises(ValueError, match="per-stage depths"):
        build_model(preset("nexception"), "tp", depth=2)
    with pytest.raises(ValueError, match="one middle-flow depth"):
        build_model(preset("nexception"), "proxy", depth=(1, 2))


def test_weights_exported_before_the_unified_head_still_load():
    from nexsearch.search_space.builder import checkpoint_filter_fn

    m = build_model(preset("xception"), "proxy", width=0.125)
    old = {(k[len("head."):] if k.startswith("head.fc.") else k): v for k, v in m.state_dict().items()}
    assert "fc.weight" in old
    m.load_state_dict(checkpoint_filter_fn(old, m), strict=True)

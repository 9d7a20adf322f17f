import json

import numpy as np
import pytest
import timm
import torch

import nexsearch  # noqa: F401
from nexsearch.cli import main
from nexsearch.errors import UserError
from nexsearch.export import export_model, load_model
from nexsearch.bench.infer import bench_infer
from nexsearch.runners.status import run_status


def test_export_incumbent_of_a_run_roundtrips(small_run, tmp_path):
    out = tmp_path / "best.safetensors"
    result = export_model(small_run, out=out, size="tp")
    inc = run_status(small_run)["incumbent"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"] == inc["config"] and meta["source"]["trial"] == inc["trial"]
    assert meta["size"] == "tp" and meta["num_classes"] == 1000 and meta["input_size"] == 224
    assert meta["params"] == result["params"] > 1e6 and meta["macs"] > 1e9
    assert "--opt lamb" in out.with_suffix(".md").read_text()
    model = load_model(out)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    again = load_model(out)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
        via_timm = timm.create_model("nexsearch_net", config=str(out.with_suffix(".json")), pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(out))).eval()
        assert torch.equal(via_timm(x), model(x))
    assert via_timm.pretrained_cfg["classifier"] == "head.fc" and via_timm.pretrained_cfg["num_classes"] == 1000
    # fine-tuning on another class count through timm: backbone loaded, classifier fresh
    ten = timm.create_model("nexsearch_net", config=str(out.with_suffix(".json")), pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(out)))
    assert ten.get_classifier().out_features == 10
    assert torch.equal(ten.state_dict()["stem.0.weight"], model.state_dict()["stem.0.weight"])
    xc = timm.create_model("nexsearch_net", config=nexsearch.preset("xception"), layout="xception")
    assert xc.pretrained_cfg["input_size"] == (3, 299, 299) and xc.pretrained_cfg["classifier"] == "head.fc"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_export_trial_and_preset_via_cli(small_run, tmp_path, capsys):
    from nexsearch.runview import RunView

    history = RunView(small_run).history
    trials, configs = history.trials, history.configs
    ok = [t for t in trials if t["status_name"] == "success"]
    last = ok[-1]
    assert main(["export", str(small_run), "--trial", str(last["trial"]), "--size", "t",
                 "--out", str(tmp_path / "t1.safetensors")]) == 0
    meta = json.loads((tmp_path / "t1.json").read_text())
    assert meta["config"] == configs[str(last["config_id"])] and meta["source"]["trial"] == last["trial"]
    assert main(["export", "--preset", "nexception", "--size", "s", "--out", str(tmp_path / "s.safetensors")]) == 0
    meta = json.loads((tmp_path / "s.json").read_text())
    assert abs(meta["params"] - 43.4e6) / 43.4e6 < 0.01 and meta["source"] == {"preset": "nexception"}
    assert "wrote weights" in capsys.readouterr().out


def test_onnx_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "tp.safetensors"
    export_model(preset="nexception", size="tp", out=out, onnx=True)
    model = load_model(out)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort.InferenceSession(str(out.with_suffix(".onnx"))).run(None, {"input": x.numpy()})[0]
    assert got.shape == ref.shape == (2, 1000)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)


def test_export_bad_input(small_run, tmp_path, capsys):
    cases = [
        ["export", str(small_run), "--size", "xl", "--out", str(tmp_path / "a.safetensors")],
        ["export", "--preset", "resnet", "--out", str(tmp_path / "a.safetensors")],
        ["export", "--preset", "nexception", "--out", str(tmp_path / "no" / "dir" / "a.safetensors")],
        ["export", str(small_run), "--trial", "999", "--out", str(tmp_path / "a.safetensors")],
        ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "a.safetensors")],
    ]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nexsearch: "), (args, err)
    assert not list(tmp_path.glob("a.*"))
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nothing.safetensors")
    export_model(preset="xception", size="t", out=tmp_path / "x.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="corrupted"):
        load_model(tmp_path / "x.safetensors")


def test_run_without_success_cannot_export(tmp_path):
    from rich.console import Console

    from nexsearch.runners.experiment import experiment_from_dict
    from nexsearch.runners.search import run_search

    exp = experiment_from_dict({
        "name": "crash", "dataset": "synthetic", "image_size": 16, "train_subset": 128, "download": False,
        "data_dir": None, "min_epochs": 1, "max_epochs": 1, "output_dir": str(tmp_path / "run"),
        "train": {"width": 0.125, "batch_size": 32, "lr": 1e30, "throughput_batch": 8, "throughput_iters": 1},
    })
    run_search(exp, 3.0, console=Console(quiet=True))
    with pytest.raises(UserError, match="no successful trial"):
        export_model(tmp_path / "run", out=tmp_path / "m.safetensors")


def test_bench_infer_tiny(tmp_path):
    out = tmp_path / "m.safetensors"
    export_model(preset="nexception", size="tp", out=out)
    result = bench_infer([str(out), "nexception_tp", "resnet50"], device="cpu", batch=2, reps=2, warmup=1,
                         input_size=64)
    names = [r["model"] for r in result["results"]]
    assert names == ["m", "nexception_tp", "resnet50"]
    assert all(r["images_per_s"] > 0 for r in result["results"])
    assert result["results"][0]["params"] == result["results"][1]["params"]


def test_bench_infer_cli_ratios_for_exports(tmp_path, capsys):
    out = tmp_path / "found.safetensors"
    export_model(preset="nexception", size="tp", out=out)
    assert main(["bench", "infer", "--models", f"{out},convnext_tiny", "--batch-size", "1", "--reps", "2",
                 "--input-size", "64", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in result["results"]] == ["found", "convnext_tiny"]
    (ratio,) = result["ratios"]
    assert ratio["model"] == "found" and ratio["baseline"] == "convnext_tiny" and ratio["paper"] == 1.27
    by = {r["model"]: r["images_per_s"] for r in result["results"]}
    assert ratio["ratio"] == pytest.approx(by["found"] / by["convnext_tiny"], rel=1e-2)

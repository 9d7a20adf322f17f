"""TensorBoard output: read back with TensorBoard's own EventAccumulator (scalars and the HParams plugin)."""

import sys

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from nexsearch.analysis.run import load_run  # noqa: E402
from nexsearch.cli import main  # noqa: E402


def _read(folder):
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    ea.Reload()
    scalars = {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
    hparams, metrics = {}, {}
    for tag, content in ea.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for name, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                hparams[name] = getattr(value, kind)
    return scalars, hparams


def _check_run(run_dir, root):
    run = load_run(run_dir)
    ok = run.successful
    assert sorted(p.name for p in root.iterdir()) == [f"trial_{t:04d}" for t in sorted(ok["trial"])]
    for _, row in ok.iterrows():
        scalars, hparams = _read(root / f"trial_{int(row['trial']):04d}")
        assert scalars["curve/val_error"] == [(p["epoch"], pytest.approx(p["val_error"])) for p in row["curve"]]
        config = run._configs[str(row["config_id"])]
        assert {k: hparams[k] for k in config} == {k: (float(v) if isinstance(v, (int, float)) and not
                                                      isinstance(v, bool) else v) for k, v in config.items()}
        budget = 0.0 if row["budget"] != row["budget"] else row["budget"]  # no budget (bo, random): 0
        assert hparams["trial"] == row["trial"] and hparams["budget"] == budget


def test_analyze_tensorboard_writes_every_successful_trial(hyperband_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "hb"
    shutil.copytree(hyperband_run, run_dir)
    assert main(["analyze", str(run_dir), "--tensorboard", "--out", str(tmp_path / "an")]) == 0
    assert f"wrote tensorboard: {run_dir / 'tensorboard'}" in capsys.readouterr().out
    _check_run(run_dir, run_dir / "tensorboard")
    assert main(["analyze", str(run_dir), "--tensorboard", "--out", str(tmp_path / "an")]) == 0  # again: replaced
    _check_run(run_dir, run_dir / "tensorboard")


def test_a_search_with_tensorboard_writes_each_trial_as_it_ends(tmp_path):
    from fake_runs import block_and_kernel, fake_trainer
    from rich.console import Console

    from nexsearch.objectives import target
    from nexsearch.runners.experiment import experiment_from_dict
    from nexsearch.runners.search import run_search

    out = tmp_path / "tb"
    exp = experiment_from_dict({
        "name": "tb", "dataset": "synthetic", "image_size": 16, "train_subset": 64, "download": False,
        "data_dir": None, "optimizer": "random", "max_trials": 6, "max_epochs": 3, "initial_design": 4,
        "output_dir": str(out), "tensorboard": True,
        "train": {"width": 0.125, "batch_size": 32, "throughput_batch": 8, "throughput_iters": 1},
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(target, "train_proxy", fake_trainer(block_and_kernel, 0.01, None, 3))
        run_search(exp, 600.0, console=Console(quiet=True))
    _check_run(out, out / "tensorboard")


def test_missing_tensorboard_is_one_line(random_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main(["analyze", str(random_run), "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nexsearch: TensorBoard output needs the tensorboard package") and err.count("\n") == 1

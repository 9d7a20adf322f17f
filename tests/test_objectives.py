import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from nexsearch.errors import UserError
from nexsearch.objectives import target
from nexsearch.objectives.datasets import load_dataset
from nexsearch.objectives.settings import DataSpec, TrainSettings, TrialSpec
from nexsearch.objectives.trainer import budget_to_epochs, train_proxy
from nexsearch.rundir import RunDir
from nexsearch.search_space.presets import preset

TINY = dict(width=0.125, depth=1, batch_size=64, throughput_batch=32, throughput_iters=1, eval_batch_size=512)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset(DataSpec("synthetic", synthetic_size=512, synthetic_classes=4, image_size=16, seed=0))


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSpec("digits", seed=0, image_size=16))


def test_budget_rounding():
    assert [budget_to_epochs(b, 7) for b in (None, 0.2, 1.0, 2.5, 3.33, 11.1, 26.9)] == [7, 1, 1, 3, 3, 11, 27]


def test_validation_split_is_disjoint_and_seeded(digits):
    def keys(d):
        return {bytes(x.numpy().tobytes()) + bytes([int(y)]) for x, y in zip(d.images, d.labels)}

    assert len(digits.val) == round(0.1 * (len(digits.train) + len(digits.val)))
    assert not keys(digits.train) & keys(digits.val)
    assert not keys(digits.test) & keys(digits.val)
    again = load_dataset(DataSpec("digits", seed=0, image_size=16))
    assert torch.equal(again.val.images, digits.val.images)
    other = load_dataset(DataSpec("digits", seed=1, image_size=16))
    assert not torch.equal(other.val.labels, digits.val.labels)
    assert digits.train.images.dtype == torch.uint8 and digits.train.images.shape[1:] == (3, 16, 16)


def test_loss_falls_on_synthetic(synthetic):
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(lr=5e-3, **{**TINY, "batch_size": 32}), seed=0, budget=4)
    assert r["status"] == "ok", r["reason"]
    losses = [c["train_loss"] for c in r["curve"]]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.7
    assert r["cost"] == r["val_error"] < 0.25  # 4 classes: chance is 0.75
    for key in ("val_loss", "train_time_s", "params", "macs", "throughput", "peak_memory_mb"):
        assert r[key] is not None and r[key] > 0, key


def test_digits_reaches_80_percent_in_6_epochs(digits):
    # how fast is a benchmark's question (nexsearch bench train, docs/benchmarks.md), not this test's
    settings = TrainSettings(lr=5e-3, hflip=False, **TINY)
    r = train_proxy(preset("nexception"), digits, settings, seed=0, budget=6)
    assert r["status"] == "ok", r["reason"]
    assert 1 - r["val_error"] > 0.80


def test_determinism_on_cpu(synthetic):
    s = TrainSettings(**TINY)
    a = train_proxy(preset("xception"), synthetic, s, seed=3, budget=2)
    b = train_proxy(preset("xception"), synthetic, s, seed=3, budget=2)
    assert a["cost"] == b["cost"] and a["val_loss"] == b["val_loss"]


def test_nan_is_contained(synthetic):
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(lr=1e30, **TINY), seed=0, budget=2)
    assert r["status"] == "diverged" and "non-finite" in r["reason"]
    assert r["cost"] == 1.0


def test_oom_is_contained(synthetic, monkeypatch):
    import nexsearch.objectives.trainer as trainer

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer, "measure_throughput", oom)
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(crash_cost=2.5, **TINY), seed=0, budget=1)
    assert r["status"] == "oom" and "20.00 GiB" in r["reason"] and r["cost"] == 2.5


def test_exception_is_contained(synthetic, monkeypatch):
    import nexsearch.objectives.trainer as trainer

    def boom(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(trainer, "count_macs_fast", boom)
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(**TINY), seed=0, budget=1)
    assert r["status"] == "crashed" and r["reason"] == "RuntimeError: kernel exploded"


def test_time_limit_stops_inside_the_trainer(synthetic):
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(time_limit_s=0.5, **TINY), seed=0, budget=50)
    assert r["status"] == "timeout" and "time limit" in r["reason"]
    assert r["epochs_run"] < 50 and r["val_error"] is not None


def test_mixup_cutmix_label_smoothing_run(synthetic):
    s = TrainSettings(mixup=0.1, cutmix=1.0, label_smoothing=0.1, **TINY)
    r = train_proxy(preset("nexception"), synthetic, s, seed=0, budget=1)
    assert r["status"] == "ok", r["reason"]


def _write_fake_cifar100(root, n_train=60, n_test=20):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": rng.integers(0, 100, n).tolist(),
            "coarse_labels": rng.integers(0, 20, n).tolist(),
            "filenames": [f"img{i}.png" for i in range(n)],
            "batch_label": name,
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)  # the real files are protocol-2 pickles with str keys
    with open(folder / "meta", "wb") as fh:
        meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
        pickle.dump(meta, fh, protocol=2)
    return folder


def test_fake_cifar100_folder_loads(tmp_path):
    _write_fake_cifar100(tmp_path)
    splits = load_dataset(DataSpec("cifar100", tmp_path, val_fraction=0.1))
    assert splits.num_classes == 100
    assert len(splits.train) == 54 and len(splits.val) == 6 and len(splits.test) == 20
    assert splits.train.images.shape[1:] == (3, 32, 32) and splits.train.images.dtype == torch.uint8


def test_missing_cifar_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cifar-100-python"):
        load_dataset(DataSpec("cifar100", tmp_path / "nowhere"))


def test_folder_dataset(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((20, 24, 3), 40 * i + (cls == "dog"), np.uint8)).save(tmp_path / cls / f"{i}.png")
    splits = load_dataset(DataSpec("folder", tmp_path, image_size=16, val_fraction=0.2))
    # 10 images: a seeded test_fraction 0.1 (1 image) is carved off first, then 20% of the rest for validation.
    assert splits.num_classes == 2 and splits.image_size == 16
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 2, 1)
    images = [bytes(x.numpy().tobytes()) for part in (splits.train, splits.val, splits.test) for x in part.images]
    assert len(set(images)) == 10  # disjoint, every image once
    again = load_dataset(DataSpec("folder", tmp_path, image_size=16, val_fraction=0.2))
    assert torch.equal(again.test.images, splits.test.images)  # seeded


def test_folder_dataset_with_a_test_dir(tmp_path):
    from PIL import Image

    for root, n in ((tmp_path / "train", 6), (tmp_path / "test", 3)):
        for cls in ("cat", "dog"):
            (root / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 30 * i + (root.name == "test"), np.uint8)).save(root / cls / f"{i}.png")
    splits = load_dataset(DataSpec("folder", tmp_path / "train", image_size=8, val_fraction=0.25,
                                   test_dir=tmp_path / "test"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    assert sorted(splits.test.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "test" / "bird").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / "bird" / "0.png")
    with pytest.raises(UserError, match="same class sub-folders"):
        load_dataset(DataSpec("folder", tmp_path / "train", image_size=8, test_dir=tmp_path / "test"))


def test_evaluate_scores_the_loaders_eval_batches(synthetic):
    """evaluate() over DeviceLoader.eval_batches: every image once, in order, normalised with the training
    split's statistics and not augmented -- the loss and error of the whole split in one forward pass."""
    from nexsearch.objectives.trainer import DeviceLoader, evaluate

    settings = TrainSettings(channels_last=False)  # augmentation on: eval batches must not use it
    loader = DeviceLoader(synthetic.train, synthetic, settings, torch.Generator().manual_seed(0))
    val = synthetic.val
    mean = torch.tensor(synthetic.mean).view(1, -1, 1, 1)
    std = torch.tensor(synthetic.std).view(1, -1, 1, 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(val.images[0].numel(), synthetic.num_classes))
    with torch.no_grad():
        logits = model((val.images.float() / 255 - mean) / std)
    loss, error = evaluate(model, loader.eval_batches(val, 7), settings.precision)  # 7: a short last batch
    assert len(val) % 7 != 0
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, val.labels).item(), rel=1e-5)
    assert error == pytest.approx((logits.argmax(1) != val.labels).float().mean().item())
    assert 0 < error < 1 and model.training


def test_a_search_keeps_the_test_split_on_the_cpu(monkeypatch):
    """A search process's data (target.SEARCH.loaded) has training and validation on the training device and the
    test split, which no trial reads, on the CPU; an evaluation's (load_splits(test=True)) has all three there.
    The meta device stands in for a GPU."""
    from nexsearch.objectives.trainer import DeviceLoader

    context = target.TrialContext("test")
    spec = context.configure(TrialSpec(DataSpec("synthetic", synthetic_size=64, image_size=8),
                                       TrainSettings(device="meta")))
    _, splits = context.loaded()
    on = lambda data: {data.images.device.type, data.labels.device.type}  # noqa: E731
    assert on(splits.train) == on(splits.val) == {"meta"}
    assert on(splits.test) == {"cpu"}
    assert on(target.load_splits(spec, test=True).test) == {"meta"}
    # a test split left on the CPU is still evaluated on the training device, batch by batch
    loader = DeviceLoader(splits.train, splits, spec.settings, torch.Generator())
    x, y = next(loader.eval_batches(splits.test, 4))
    assert (x.device.type, y.device.type, x.dtype, tuple(x.shape)) == ("meta", "meta", torch.float32, (4, 3, 8, 8))


def test_target_function_success_and_failure(tmp_path):
    log = tmp_path / "trials.jsonl"
    target.SEARCH.configure(TrialSpec(DataSpec("synthetic", image_size=16), TrainSettings(**TINY, epochs=1),
                                      objectives=("error", "params"), run_dir=RunDir(tmp_path)))
    cost, info = target.target_function(preset("nexception"), seed=0, budget=1)
    assert set(cost) == {"error", "params"} and 0 <= cost["error"] <= 1 and cost["params"] == info["params"]
    target.SEARCH.configure(TrialSpec(DataSpec("synthetic", image_size=16), TrainSettings(**dict(TINY, lr=1e30)),
                                      run_dir=RunDir(tmp_path)))
    with pytest.raises(target.TrialFailed, match="diverged"):
        target.target_function(preset("nexception"), seed=0, budget=1)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok", "diverged"]
    assert lines[0]["config"] == preset("nexception") and lines[1]["reason"]


def test_bench_train_cli_small():
    out = subprocess.run(
        [sys.executable, "-m", "nexsearch.cli", "bench", "train", "--steps", "2", "--warmup", "1",
         "--batch-size", "32", "--workers", "0", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["nexsearch_images_per_s"] > 0 and result["baseline_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["nexsearch_images_per_s"] / result["baseline_images_per_s"], rel=0.01)
    assert result["device"].startswith("cpu")

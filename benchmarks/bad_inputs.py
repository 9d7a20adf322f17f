"""Bad inputs against the ``nexsearch`` command (docs/reliability.md): exit status and what the user reads.

    python benchmarks/bad_inputs.py [--json FILE]

Each case calls ``nexsearch.cli.main`` in this process (one start-up for all) and records the exit
status, the number of lines on stderr, whether a traceback was printed, and whether the case left
files behind where it should not. The trials of the small runs some cases need are a fake target
(a few ms each, no training); a full disk is simulated by SMAC's save raising ENOSPC.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from nexsearch.cli import main  # noqa: E402
from nexsearch.rundir import RunDir  # noqa: E402

TINY = {"name": "bad-inputs", "dataset": "synthetic", "image_size": 16, "train_subset": 64, "download": False,
        "data_dir": None, "min_epochs": 1, "max_epochs": 1, "initial_design": 3, "retrain_after": 2,
        "train": {"width": 0.125, "batch_size": 32, "lr": 0.005, "throughput_batch": 8, "throughput_iters": 1}}


def _fake_evaluate(config, seed=0, budget=None):
    from nexsearch.objectives import target

    time.sleep(0.02)
    spec = target.SEARCH.spec
    if spec is not None and spec.run_dir is not None:
        spec.run_dir.append_trial({"status": "ok", "config": dict(config), "seed": seed})
    return 0.1 + len(json.dumps(dict(config), sort_keys=True, default=str)) % 97 / 1000, {"status": "ok"}


def _call(args: list[str]) -> tuple[int, list[str]]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # a traceback would reach the user
            import traceback

            traceback.print_exc()
            code = f"raised {type(exc).__name__}"
    return code, err.getvalue().strip().splitlines()


def cases(d: Path) -> list[tuple[str, list[str], object]]:
    from nexsearch.objectives import target

    def cfg(file_name: str, **changes) -> str:
        data = json.loads(json.dumps(TINY))
        for k, v in changes.items():
            data[k] = dict(data[k], **v) if k == "train" else v
        (d / file_name).write_text(yaml.safe_dump(data))
        return str(d / file_name)

    base = cfg("e.yaml")
    (d / "empty.yaml").write_text("# nothing\n")
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (d / "bad.yaml").write_text("name: [unclosed\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "a_file").write_text("x")
    (d / "other").mkdir()
    (d / "other" / "notes.txt").write_text("not a run")
    (d / "empty_dir").mkdir()
    (d / "no_images" / "cat").mkdir(parents=True)
    (d / "no_images" / "cat" / "a.txt").write_text("x")
    run = d / "run"
    real = target.evaluate_trial
    target.evaluate_trial = _fake_evaluate
    try:
        _call(["run", "--budget", "3s", "--config", base, "--out", str(run)])
    finally:
        target.evaluate_trial = real
    r = ["run", "--budget", "10s", "--config"]
    return [
        ("budget `3x`", ["run", "--budget", "3x", "--config", base], None),
        ("budget `-5m`", ["run", "--budget", "-5m", "--config", base], None),
        ("budget `0s`", ["run", "--budget", "0s", "--config", base], None),
        ("missing experiment file", [*r, str(d / "missing.yaml")], None),
        ("empty experiment file", [*r, str(d / "empty.yaml")], None),
        ("binary experiment file", [*r, str(d / "binary.yaml")], None),
        ("invalid YAML", [*r, str(d / "bad.yaml")], None),
        ("YAML list instead of settings", [*r, str(d / "list.yaml")], None),
        ("unknown setting `nmae`", [*r, cfg("typo.yaml", nmae="x")], None),
        ("`dataset: mnist`", [*r, cfg("mnist.yaml", dataset="mnist")], None),
        ("`val_fraction: 2`", [*r, cfg("vf.yaml", val_fraction=2)], None),
        ("`batch_size: 0`", [*r, cfg("bs.yaml", train={"batch_size": 0})], None),
        ("`lr: -1`", [*r, cfg("lr.yaml", train={"lr": -1})], None),
        ("`max_epochs: ten`", [*r, cfg("me.yaml", max_epochs="ten")], None),
        ("`min_epochs` > `max_epochs`", [*r, cfg("mm.yaml", min_epochs=5, max_epochs=2)], None),
        ("`--optimizer annealing`", [*r, base, "--optimizer", "annealing"], None),
        ("`--objectives latency`", [*r, base, "--objectives", "latency"], None),
        ("`parego` with one objective", [*r, base, "--optimizer", "parego"], None),
        ("`--workers 0`", [*r, base, "--workers", "0"], None),
        ("cifar100, no data, `--no-download`",
         [*r, base, "--dataset", "cifar100", "--data-dir", str(d / "nodata"), "--no-download"], None),
        ("`folder` on an empty directory", [*r, base, "--dataset", "folder", "--data-dir", str(d / "empty_dir")], None),
        ("`folder` without images", [*r, base, "--dataset", "folder", "--data-dir", str(d / "no_images")], None),
        ("`--device cuda` without CUDA", [*r, base, "--device", "cuda", "--out", str(d / "cuda_run")], "cuda"),
        ("`--device gpu`", [*r, base, "--device", "gpu"], None),
        ("`--out` is a file", [*r, base, "--out", str(d / "a_file")], None),
        ("`--out` under a file", [*r, base, "--out", str(d / "a_file" / "run")], None),
        ("`--out` not writable (/proc)", [*r, base, "--out", "/proc/nexsearch/run"], None),
        ("`--out` a directory that is not a run", [*r, base, "--out", str(d / "other")], None),
        ("resume with a changed `--seed`", [*r, base, "--out", str(run), "--seed", "3"], None),
        ("second run on a directory in use", [*r, base, "--out", str(run)], "lock"),
        ("status of a missing directory", ["status", str(d / "nowhere")], None),
        ("status of a directory that is not a run", ["status", str(d / "other")], None),
        ("export to /proc/x.safetensors", ["export", "--preset", "nexception", "--out", "/proc/x.safetensors"], None),
        ("export to x.txt", ["export", "--preset", "nexception", "--out", str(d / "x.txt")], None),
        ("export `--trial 999`", ["export", str(run), "--trial", "999", "--out", str(d / "m.safetensors")], None),
        # issue 23: hostile inputs and environments
        ("`--workers 64` (more than the CPU slots)", [*r, base, "--workers", "64", "--device", "cpu",
                                                     "--out", str(d / "w64")], None),
        ("`train.throughput_batch: 100000`", [*r, cfg("tb.yaml", train={"throughput_batch": 100000})], None),
        ("`train.width: 50`", [*r, cfg("wd.yaml", train={"width": 50})], None),
        ("`train.depth: 1000000`", [*r, cfg("dp.yaml", train={"depth": 1000000})], None),
        ("`image_size: 4096`", [*r, cfg("is.yaml", image_size=4096)], None),
        ("`name: \".\"`", [*r, cfg("dot.yaml", name=".")], None),
        ("budget `400d`", ["run", "--budget", "400d", "--config", base], None),
        ("unreachable `--scheduler tcp://127.0.0.1:1`", [*r, base, "--scheduler", "tcp://127.0.0.1:1", "--out",
                                                         str(d / "sched")], "timed"),
        ("cifar100 with a crafted `meta` pickle", [*r, base, "--dataset", "cifar100", "--data-dir", str(d / "evil"),
                                                   "--no-download", "--out", str(d / "evil_run")], "evil"),
        ("`folder` with one class", [*r, base, "--dataset", "folder", "--data-dir", str(d / "one_class")], "one_class"),
        ("export `--out RUN/nexsearch.safetensors`", ["export", str(run), "--out", str(run / "nexsearch.safetensors")],
         None),
        ("export over an existing file, no `--force`",
         ["export", "--preset", "nexception", "--out", str(d / "a.safetensors")], "existing"),
        ("resume with `trials.jsonl` a symbolic link", [*r, base, "--out", str(run)], "symlink"),
        ("resume with `nexsearch.json` emptied, no copy", [*r, base, "--out", str(run)], "lost_state"),
        ("evaluate with `experiment.yaml` edited", ["evaluate", str(run), "--presets", "none"], "edited"),
        ("bench infer, sidecar `\"size\": \"zz\"`", ["bench", "infer", "--models", str(d / "zz.safetensors"),
                                                       "--device", "cpu"], "sidecar"),
        ("resume with runhistory.json and its backup deleted", [*r, base, "--out", str(run)], "no_state"),
        ("full disk during a run (simulated ENOSPC)", ["run", "--budget", "30s", "--config", base, "--out",
                                                      str(d / "full")], "enospc"),
    ]


def _evil(d: Path):
    import pickle

    import numpy as np

    class Evil:
        def __reduce__(self):
            return (open, (str(d / "pwned"), "w"))

    folder = d / "evil" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        entry = {"data": np.zeros((10, 3072), np.uint8), "fine_labels": [0] * 10}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": Evil()}, protocol=2))


def _one_class(d: Path):
    from PIL import Image

    (d / "one_class" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(d / "one_class" / "cat" / f"{i}.png")


def _swap(path: Path, change):
    """Change ``path`` (and what is beside it) for one case; the undo puts the bytes back."""
    saved = {p: p.read_bytes() for p in path.parent.iterdir() if p.is_file() and not p.is_symlink()}

    def undo():
        for p in path.parent.iterdir():
            if p.is_symlink():
                p.unlink()
        for p, data in saved.items():
            p.write_bytes(data)

    change()
    return undo


def _symlink(d: Path):
    trials = d / "run" / "trials.jsonl"
    (d / "elsewhere.txt").write_text("not yours\n")
    return _swap(trials, lambda: (trials.unlink(), trials.symlink_to(d / "elsewhere.txt")))


def _lost_state(d: Path):
    run = d / "run"
    return _swap(run / "nexsearch.json", lambda: ((run / "nexsearch.json").write_text(""),
                                                  (run / ".nexsearch.json.backup").unlink(missing_ok=True)))


def _edited(d: Path):
    exp = d / "run" / "experiment.yaml"
    return _swap(exp, lambda: exp.write_text(exp.read_text().replace("max_epochs: 1", "max_epochs: 20")))


def _sidecar(d: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        main(["export", "--preset", "nexception", "--out", str(d / "zz.safetensors")])
    meta = json.loads((d / "zz.json").read_text())
    (d / "zz.json").write_text(json.dumps(dict(meta, size="zz")))


def _existing(d: Path):
    (d / "a.json").write_text("{}")


_SETUPS = {"evil": _evil, "one_class": _one_class, "symlink": _symlink, "lost_state": _lost_state,
           "edited": _edited, "sidecar": _sidecar, "existing": _existing, "timed": lambda d: None}


@contextlib.contextmanager
def _setup(kind, d: Path):
    if kind is None:
        yield
        return
    if kind == "cuda":
        import torch

        real = torch.cuda.is_available
        torch.cuda.is_available = lambda: False
        try:
            yield
        finally:
            torch.cuda.is_available = real
        return
    if kind in _SETUPS:
        undo = _SETUPS[kind](d)
        try:
            yield
        finally:
            if undo:
                undo()
        return
    if kind == "lock":
        with open(d / "run" / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        return
    if kind == "no_state":
        smac = d / "run" / "smac" / "0"
        (smac / "runhistory.json").unlink()
        (smac / ".nexsearch-backup" / "runhistory.json").unlink()
        yield
        return
    if kind == "enospc":
        from smac.main.smbo import SMBO

        from nexsearch.objectives import target

        real_save, real_eval, saves = SMBO.save, target.evaluate_trial, []

        def save(self):
            saves.append(1)
            if len(saves) > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_save(self)

        SMBO.save, target.evaluate_trial = save, _fake_evaluate
        try:
            yield
        finally:
            SMBO.save, target.evaluate_trial = real_save, real_eval
        return
    raise ValueError(kind)


def run_all() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, args, kind in cases(d):
            t0 = time.time()
            with _setup(kind, d):
                code, err = _call(args)
            extra = ""
            if kind == "timed":
                extra = f"answered in {time.time() - t0:.1f} s; run directory created: {(d / 'sched').exists()}"
            if kind == "evil":
                extra = f"the pickle's code ran: {(d / 'pwned').exists()}"
            if kind == "symlink":
                extra = f"link target untouched: {(d / 'elsewhere.txt').read_text() == 'not yours' + chr(10)}"
            if kind == "enospc":
                state = RunDir(d / "full").read_state()["status"]
                extra = f"state file: {state}; .tmp files left: {len(list((d / 'full').rglob('*.tmp')))}"
            if kind == "cuda":
                extra = f"run directory created: {(d / 'cuda_run').exists()}"
            rows.append({"input": name, "exit": code, "stderr_lines": len(err),
                         "traceback": any("Traceback" in x for x in err), "message": err[-1] if err else "",
                         "note": extra})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| bad input | exit | lines | message |", "|---|---:|---:|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        if r["note"]:
            msg += f" ({r['note']})"
        lines.append(f"| {r['input']} | {r['exit']} | {r['stderr_lines']} | {msg} |")
    return "\n".join(lines)


def main_(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    rows = run_all()
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["stderr_lines"] == 1 and not r["traceback"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main_())

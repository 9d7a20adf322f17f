"""Every experiment setting and every command-line flag with wrong types, out-of-range and extreme values
(issue 23, item 10): each is refused with one line (exit 2; 1 for an environment fault), or accepted --
never a traceback. In-process and before any torch work: stand-ins raise ``Reached`` where the real work
(a training, a model build, a benchmark) would start, so the whole test takes seconds."""

import argparse
import contextlib
import dataclasses
import io
import json
import math
import typing
from pathlib import Path

import pytest

import nexsearch.evaluate
import nexsearch.export
from nexsearch.bench import infer
from nexsearch.cli import build_parser, main
from nexsearch.errors import UserError
from nexsearch.objectives.settings import TrainSettings
from nexsearch.runners import search
from nexsearch.runners.experiment import TRAIN_FROM_EXPERIMENT, Experiment, experiment_from_dict

TINY = {"name": "fuzz", "dataset": "synthetic", "image_size": 16, "train_subset": 64, "download": False,
        "data_dir": None, "min_epochs": 1, "max_epochs": 1, "initial_design": 3, "retrain_after": 2,
        "train": {"width": 0.125, "batch_size": 32, "lr": 0.005, "throughput_batch": 8, "throughput_iters": 1}}

NUMBERS = [-1, 0, -1e300, 1e300, math.nan, math.inf, -math.inf, 10**30, 2**63]
STRINGS = ["", " ", "x" * 100_000, "\0", "../../..", "é" * 300]
WRONG_TYPES = ["ten", [1], {"a": 1}, [[1]], True, None, 3.5, b"bytes"]


def _kind(hint) -> set:
    args = typing.get_args(hint)
    members = [a for a in args if a is not type(None)] if args else [hint]
    return {typing.get_origin(m) or m for m in members}


def _settings() -> list[tuple[str, object]]:
    """(where, field kinds) of every experiment setting and every train.* setting an experiment may set."""
    out = [(f.name, _kind(typing.get_type_hints(Experiment)[f.name])) for f in dataclasses.fields(Experiment)
           if f.name != "train"]
    hints = typing.get_type_hints(TrainSettings)
    out += [(f"train.{f.name}", _kind(hints[f.name])) for f in dataclasses.fields(TrainSettings)
            if f.name not in TRAIN_FROM_EXPERIMENT]
    return out


def _with(where: str, value) -> dict:
    data = json.loads(json.dumps(TINY))
    if where.startswith("train."):
        data["train"][where[len("train."):]] = value
    else:
        data[where] = value
    return data


def _must_refuse(kinds: set, value) -> bool:
    """Values no setting of these kinds may take: a wrong type, a number that is no number, a count past any
    machine (a huge float may be legitimate: a learning rate that makes trials diverge on purpose)."""
    numeric = kinds & {int, float}
    if isinstance(value, float) and not math.isfinite(value) and numeric:
        return True
    if type(value) is int and int in kinds and float not in kinds and abs(value) >= 1e30:
        return True
    if isinstance(value, (list, dict, bytes)) and not kinds & {list, dict}:
        return True
    return isinstance(value, str) and value == "ten" and kinds <= {int, float}


def test_every_setting_with_bad_values_is_one_line_or_accepted():
    tried, wrong = 0, []
    for where, kinds in _settings():
        for value in [*NUMBERS, *STRINGS, *WRONG_TYPES]:
            tried += 1
            try:
                experiment_from_dict(_with(where, value))
            except UserError as exc:
                if "\n" in str(exc) or not str(exc):
                    wrong.append(f"{where}={value!r:.40}: {str(exc)[:200]!r}")
                continue
            except Exception as exc:  # a traceback for the user
                wrong.append(f"{where}={value!r:.40}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            if _must_refuse(kinds, value):
                wrong.append(f"{where}={value!r:.40}: accepted")
    assert tried > 400 and not wrong, "\n".join(wrong)


class Reached(AssertionError):
    """Real work would start here: the value passed every check made before it."""


def _reached(*_args, **_kwargs):
    raise Reached()


def _call(args: list[str]) -> tuple[object, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse
            code = exc.code
        except Reached:
            code = "reached"
    return code, err.getvalue().strip().splitlines()


def _flags(verb: list[str]) -> list[argparse.Action]:
    parser = build_parser()
    for word in verb:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]


FLAG_VALUES = ["-1", "0", "ten", "", "1e400", "nan", "x" * 5000, "../../../etc/passwd", "cuda:99999999999999999999",
               "error,foo", "99999999999999999999"]


@pytest.fixture
def stand_ins(monkeypatch):
    monkeypatch.setattr(search, "check_experiment", _reached)
    monkeypatch.setattr(search, "_run_search", _reached, raising=False)  # before the run directory is made
    monkeypatch.setattr(nexsearch.evaluate, "select_candidates", _reached)
    monkeypatch.setattr(nexsearch.export, "NexNet", _reached)
    monkeypatch.setattr(infer, "bench_model", _reached)
    monkeypatch.setattr(infer, "_load", _reached)


@pytest.mark.parametrize("verb, base", [
    (["run"], ["--budget", "1m", "--out", "{tmp}/run", "--dataset", "synthetic"]),
    (["evaluate"], ["{run}", "--presets", "none"]),
    (["export"], ["--preset", "nexception", "--out", "{tmp}/m.safetensors"]),
    (["bench", "infer"], ["--models", "resnet18", "--device", "cpu"]),
    (["status"], ["{run}"]),
])
def test_every_flag_with_bad_values_is_one_line_or_accepted(verb, base, tmp_path, stand_ins):
    run = tmp_path / "fake"  # a directory that looks like a run to the checks made before any work
    (run / "smac" / "0").mkdir(parents=True)
    (run / "smac" / "0" / "runhistory.json").write_text('{"data": [], "configs": {}, "stats": {"finished": 0}}')
    (run / "experiment.yaml").write_text(json.dumps(dict(TINY, output_dir=str(run))))
    base = [b.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for b in base]
    wrong = []
    for action in _flags(verb):
        for value in FLAG_VALUES:
            args = [*verb, *base, f"{action.option_strings[-1]}={value}"]
            try:
                code, err = _call(args)
            except Exception as exc:  # a traceback for the user
                wrong.append(f"{action.option_strings[-1]}={value:.40}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            if code in (0, "reached"):
                if value in ("-1", "ten", "nan", "1e400") and action.type in (int, float):
                    wrong.append(f"{action.option_strings[-1]}={value:.40}: accepted")
            elif not (code in (1, 2) and len(err) == 1 and err[0].startswith("nexsearch: ")):
                wrong.append(f"{action.option_strings[-1]}={value:.40}: exit {code}, {err[-2:]}")
    assert not wrong, "\n".join(wrong)

"""Export a configuration (a run's incumbent, one of its trials, or a preset) as a full ImageNet model.

``export_model`` writes, each under a temporary name and then renamed (never half-written):

* ``NAME.safetensors`` -- the initialised weights: UNTRAINED (the search chose an architecture; the sidecar's
  ``weights`` and the card say so, and the card gives the command that trains them);
* ``NAME.json``        -- the sidecar: configuration, layout (size), input size, class count,
  parameters, MACs and the source (run directory and trial, or preset);
* ``NAME.md``          -- a model card with the full-size training command (paper table 1);
* ``NAME.onnx``        -- with ``onnx=True``.

``load_model(path)`` rebuilds the model from those files. timm reaches them too::

    timm.create_model("nexsearch_net", config="NAME.json", pretrained=True,
                      pretrained_cfg_overlay=dict(file="NAME.safetensors"))
"""

from __future__ import annotations

import json
import os
import sys
import time
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import torch

from nexsearch.errors import UserError
from nexsearch.objectives.settings import FULL_LAYOUTS
from nexsearch.search_space.builder import LAYOUTS, NexNet, checkpoint_filter_fn, count_macs, count_params
from nexsearch.search_space.presets import preset_configuration
from nexsearch.search_space.space import DESCRIPTIONS, to_dict, validate

SIZES = FULL_LAYOUTS  # the full-size layouts a model is exported in
FORMAT = "nexsearch-model/1"

# Paper table 1 (NEXcepTion-S uses lr 1.4e-3 and batch 128).
RECIPE = {"t": (2e-3, 256), "tp": (2e-3, 256), "s": (1.4e-3, 128), "xception": (2e-3, 256)}


def _source_config(run_dir: str | Path | None, preset: str | None, trial: int | None,
                   incumbent: bool = False) -> tuple[Any, dict[str, Any]]:
    if (run_dir is None) == (preset is None):
        raise UserError("export needs either a run directory or --preset NAME (not both)")
    if preset is not None:
        return preset_configuration(preset), {"preset": preset}
    from nexsearch.runview import RunView

    if not Path(run_dir).is_dir():
        raise UserError(f"{Path(run_dir)} does not exist: pass a run directory")
    view = RunView(run_dir)
    where = str(view.path.resolve())
    if trial is not None:
        t = view.trial(trial)
        return validate(t["config"]), {"run_dir": where, "trial": trial, "val_error": t["error"],
                                       "notes": view.history.notes}
    if not incumbent:
        winner, chosen = view.evaluated_winner()
        if winner is not None:
            source = {"run_dir": where, "trial": winner["trial"], "preset": winner["preset"],
                      "val_error": winner["val_error_mean"], "chosen": chosen,
                      "evaluation": {k: winner[k] for k in ("epochs", "seeds", "seeds_done", "val_error_mean",
                                                            "test_error_mean")}}
            return validate(winner["config"]), source
    else:
        chosen = "exporting the search's incumbent"
    inc = view.incumbent() if len(view.history.objectives) == 1 else None
    if inc is None and view.history.successful:  # several objectives: the front's lowest error
        front = view.pareto_front()[0]
        inc = dict(front, error=front["costs"][view.history.objectives[0]])
    if inc is None:
        raise UserError(f"{view.path} has no successful trial yet: nothing to export")
    return validate(inc["config"]), {"run_dir": where, "trial": inc["trial"], "val_error": inc["error"],
                                     "chosen": chosen, "notes": view.history.notes}


def _atomic_write(path: Path, write) -> None:
    """``rundir.write_atomic``, with a file that cannot be written as a one-line error."""
    from nexsearch.rundir import write_atomic

    try:
        write_atomic(path, write)
    except Exception as exc:  # OSError, or safetensors' own error for a file it cannot write
        from safetensors import SafetensorError

        if not isinstance(exc, (OSError, SafetensorError)):
            raise
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise UserError(f"cannot write {path} ({reason}): choose another --out") from None


UNTRAINED = "untrained: initialised weights, not trained on any data (train them with the model card's command)"


def chosen_on(source: dict[str, Any]) -> dict[str, Any] | None:
    """What a run's configuration was chosen on: its dataset, image size, epochs per trial, search budget."""
    if "run_dir" not in source:
        return None
    from nexsearch.rundir import RunDir
    from nexsearch.runners.experiment import read_saved_experiment

    rd = RunDir(source["run_dir"])
    try:
        exp = read_saved_experiment(rd)
    except (OSError, UserError):
        return None
    return {"dataset": exp.dataset, "image_size": exp.image_size, "max_epochs": exp.max_epochs,
            "search_budget_s": rd.read_state().get("budget_s")}


def source_line(source: dict[str, Any], chosen: dict[str, Any] | None) -> str:
    """The card's ``source:`` line, in words."""
    from nexsearch.runners.budget import format_duration

    if "run_dir" not in source:
        return f"the paper's preset '{source.get('preset')}'"
    what = (f"preset '{source['preset']}' as evaluated in" if source.get("preset") else f"trial {source['trial']} of")
    text = f"{what} the run {source['run_dir']}"
    if source.get("val_error") is not None:
        text += f" (validation error {source['val_error']:.4f}"
        text += f", mean of {source['evaluation']['seeds_done']} evaluation seeds)" if source.get("evaluation") else ")"
    if chosen:
        budget = chosen.get("search_budget_s")
        text += (f"; chosen on {chosen['dataset']} at {chosen['image_size']}x{chosen['image_size']}, proxy trials of "
                 f"up to {chosen['max_epochs']} epochs" + (f", a {format_duration(budget)} search" if budget else ""))
    return text


def model_card(meta: dict[str, Any], weights: Path) -> str:
    lr, batch = RECIPE.get(meta["size"], RECIPE["t"])
    cfg = meta["config"]
    lines = [
        f"# {weights.stem}: NEXcepTion design space, layout '{meta['size']}'",
        "",
        f"**The weights are untrained** (initialised with seed {meta['weights']['seed']}): this file is an "
        "architecture found by a search, to be trained with the command below.",
        "",
        f"- parameters: {meta['params']:,} ({meta['params'] / 1e6:.2f}M)",
        f"- multiply-accumulates at {meta['input_size']}x{meta['input_size']}: {meta['macs'] / 1e9:.2f}G",
        f"- classes: {meta['num_classes']}; input {meta['input_size']}x{meta['input_size']}",
        f"- source: {source_line(meta['source'], meta.get('chosen_on'))}",
        "",
        "## Design choices",
        "",
    ]
    lines += [f"- `{k}` = `{v}`: {DESCRIPTIONS.get(k, '')}" for k, v in cfg.items()]
    lines += [
        "",
        "## Training (paper table 1, with timm's train.py)",
        "",
        "timm's own train.py (from a clone of pytorch-image-models), run through nexsearch's launcher, which "
        "registers `nexsearch_net` first:",
        "",
        "```",
        "python -m nexsearch.timm_train path/to/pytorch-image-models/train.py /path/to/imagenet \\",
        f"  --model nexsearch_net --model-kwargs config={weights.with_suffix('.json')} \\",
        f"  --img-size {meta['input_size']} --opt lamb --lr {lr:g} --weight-decay 0.02 --batch-size {batch} \\",
        "  --epochs 300 --sched cosine --warmup-epochs 5 --min-lr 1e-6 --aa rand-m7-mstd0.5 \\",
        "  --mixup 0.1 --cutmix 1.0 --reprob 0.0 --smoothing 0.0 --bce-loss --drop-path 0.05 \\",
        "  --crop-pct 0.95 --amp --channels-last",
        "```",
        "",
    ]
    return "\n".join(lines)


def check_out(out: Path, force: bool, onnx: bool) -> None:
    """Where an export may write: never inside a run directory (its state files would be replaced), never over
    an existing file without ``force`` (and then the old sidecar and card go first, so that a killed export
    never leaves new weights beside an old sidecar). Temporary files of earlier, killed exports are removed."""
    from nexsearch.rundir import RunDir, pid_alive

    for folder in map(RunDir, (out.parent.resolve(), *out.parent.resolve().parents)):
        if folder.state.is_file() or (folder.is_run() and (folder.path / folder.SMAC).is_dir()):
            raise UserError(f"--out {out} is inside the run directory {folder.path}: export outside it (its files are "
                            "the run's state)")
    names = [out, out.with_suffix(".json"), out.with_suffix(".md")] + ([out.with_suffix(".onnx")] if onnx else [])
    existing = [p for p in names if p.exists() or p.is_symlink()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists: pass --force to replace it, or choose another --out")
    for stale in out.parent.glob(f".{glob_escape(out.stem)}.*.tmp"):  # ".NAME.safetensors.PID.tmp" of a killed export
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    for path in existing:  # --force: the old sidecar and card go before the new weights are written
        if path != out:
            path.unlink()


def export_model(
    run_dir: str | Path | None = None,
    *,
    out: str | Path,
    size: str = "t",
    preset: str | None = None,
    trial: int | None = None,
    onnx: bool = False,
    num_classes: int = 1000,
    seed: int = 0,
    incumbent: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Build the full-size model of the chosen configuration and write weights, sidecar, card (and ONNX).

    From a run: the winner of its finished ``nexsearch evaluate`` when there is one, else (or with
    ``incumbent=True``) the search's incumbent; ``trial`` picks a trial.
    """
    if size not in SIZES and not (size == "xception" and preset == "xception"):
        raise UserError(f"unknown size '{size}': choose one of {', '.join(SIZES)}")
    config, source = _source_config(run_dir, preset, trial, incumbent)
    for note in source.pop("notes", []):  # the run's live state file was unreadable: say which copy was read
        print(f"note: {note}", file=sys.stderr)
    chosen = source.pop("chosen", None)
    out = _check_out(Path(out))
    check_out(out, force, onnx)
    layout = LAYOUTS[size]
    torch.manual_seed(seed)
    model = NexNet(config, size, num_classes=num_classes).eval()
    meta = {
        "format": FORMAT,
        "config": to_dict(config),
        "size": size,
        "input_size": layout.input_size,
        "num_classes": num_classes,
        "params": count_params(model),
        "macs": count_macs(model, layout.input_size),
        "source": source,
        "chosen_on": chosen_on(source),
        "weights": {"trained": False, "seed": seed, "note": UNTRAINED},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    card = model_card(meta, out)
    paths = _write_files(model, meta, card, out, onnx)
    return {**meta, "paths": paths, "card": card, "chosen": chosen}


def _check_out(out: Path) -> Path:
    """Before building the model: ``out`` names a safetensors file that can be written."""
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out.name}")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"cannot write {out}: folder {out.parent} is not writable")
    probe = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:  # can a file be written there at all?
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}): choose another --out") from None
    return out


def _write_files(model: NexNet, meta: dict[str, Any], card: str, out: Path, onnx: bool) -> dict[str, str]:
    """Weights, sidecar, card (and ONNX), each written whole; their paths."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    sidecar = out.with_suffix(".json")
    _atomic_write(sidecar, lambda p: p.write_text(json.dumps(meta, indent=2)))
    _atomic_write(out.with_suffix(".md"), lambda p: p.write_text(card))
    paths = {"weights": str(out), "sidecar": str(sidecar), "card": str(out.with_suffix(".md"))}
    if onnx:
        onnx_path = out.with_suffix(".onnx")
        size = meta["input_size"]
        dummy = torch.zeros(1, 3, size, size)

        def write_onnx(p: Path) -> None:
            torch.onnx.export(model, (dummy,), str(p), dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)

        _atomic_write(onnx_path, write_onnx)
        paths["onnx"] = str(onnx_path)
    return paths


def read_sidecar(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    weights = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    sidecar = weights.with_suffix(".json")
    for p in (weights, sidecar):
        if not p.is_file():
            raise UserError(f"model file {p} not found: export writes NAME.safetensors and NAME.json side by side")
    try:
        meta = json.loads(sidecar.read_text())
        meta["config"] = validate(meta["config"])  # a Configuration from here on: checked once, on load
        meta["size"], meta["num_classes"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{sidecar} is not a nexsearch model sidecar ({type(exc).__name__}: {exc})") from None
    return weights, meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> NexNet:
    """Rebuild an exported model from NAME.safetensors + NAME.json (eval mode). An export's weights are
    untrained (initialised): a ``UserWarning`` says so, and ``model.nexsearch_meta`` holds the sidecar."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta = read_sidecar(path)
    model = NexNet(meta["config"], meta["size"], num_classes=meta["num_classes"])  # meta["config"]: validated
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights} is corrupted or not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    except RuntimeError as exc:
        raise UserError(f"{weights} does not match its sidecar {weights.with_suffix('.json')}: "
                        f"{str(exc).splitlines()[0]}") from None
    if not (meta.get("weights") or {}).get("trained", True):
        import warnings

        warnings.warn(f"{weights.name}: {UNTRAINED}", UserWarning, stacklevel=2)
    model.nexsearch_meta = meta
    return model.to(device).eval()

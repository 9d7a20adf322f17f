"""Export a configuration (a run's incumbent, one of its trials, or a preset) as a full ImageNet model.

``export_model`` writes, each under a temporary name and then renamed (never half-written):

* ``NAME.safetensors`` -- the initialised weights;
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
from nexsearch.search_space.builder import LAYOUTS, NexNet, checkpoint_filter_fn, count_macs, count_params
from nexsearch.search_space.presets import preset_configuration
from nexsearch.search_space.space import DESCRIPTIONS, to_dict, validate

SIZES = ("t", "s", "tp")
FORMAT = "nexsearch-model/1"

# Paper table 1 (NEXcepTion-S uses lr 1.4e-3 and batch 128).
RECIPE = {"t": (2e-3, 256), "tp": (2e-3, 256), "s": (1.4e-3, 128), "xception": (2e-3, 256)}


def _source_config(run_dir: str | Path | None, preset: str | None, trial: int | None,
                   incumbent: bool = False) -> tuple[Any, dict[str, Any]]:
    if (run_dir is None) == (preset is None):
        raise UserError("export needs either a run directory or --preset NAME (not both)")
    if preset is not None:
        return preset_configuration(preset), {"preset": preset}
    from nexsearch.results import error_of
    from nexsearch.rundir import RunDir
    from nexsearch.runners.status import run_status

    rd = RunDir(run_dir)
    run_dir = rd.path
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} does not exist: pass a run directory")
    notes: list[str] = []
    if trial is None and not incumbent:
        from nexsearch.evaluate import evaluated_winner

        winner, chosen = evaluated_winner(run_dir)
        if winner is not None:
            source = {"run_dir": str(run_dir.resolve()), "trial": winner["trial"], "preset": winner["preset"],
                      "val_error": winner["val_error_mean"], "chosen": chosen,
                      "evaluation": {k: winner[k] for k in ("epochs", "seeds", "seeds_done", "val_error_mean",
                                                            "test_error_mean")}}
            return validate(winner["config"]), source
    else:
        chosen = "exporting the search's incumbent" if trial is None else f"exporting trial {trial}"
    if trial is None:
        info = run_status(run_dir)
        notes = info["notes"]
        inc = info.get("incumbent")
        if inc is None and info.get("pareto_front"):
            inc = dict(info["pareto_front"][0], error=info["pareto_front"][0]["costs"][info["objectives"][0]])
        if inc is None:
            raise UserError(f"{run_dir} has no successful trial yet: nothing to export")
        return validate(inc["config"]), {"run_dir": str(run_dir.resolve()), "trial": inc["trial"],
                                                   "val_error": inc["error"], "chosen": chosen, "notes": notes}
    trials, configs, _ = rd.runhistory(notes=notes)
    match = [t for t in trials if t["trial"] == trial]
    if not match:
        raise UserError(f"trial {trial} not found in {run_dir}: it has trials 1..{len(trials)}")
    t = match[0]
    if t["status_name"] == "running":
        raise UserError(f"trial {trial} of {run_dir} has no result yet (running, or interrupted when the run stopped: "
                        "resuming the run evaluates it again): pick a successful trial")
    if t["status_name"] != "success":
        raise UserError(f"trial {trial} of {run_dir} did not succeed ({t['status_name']}): pick a successful trial")
    return validate(configs[str(t["config_id"])]), {"run_dir": str(run_dir.resolve()), "trial": trial,
                                                     "val_error": error_of(t["cost"]), "notes": notes}


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


def model_card(meta: dict[str, Any], weights: Path) -> str:
    lr, batch = RECIPE.get(meta["size"], RECIPE["t"])
    cfg = meta["config"]
    lines = [
        f"# {weights.stem}: NEXcepTion design space, layout '{meta['size']}'",
        "",
        f"- parameters: {meta['params']:,} ({meta['params'] / 1e6:.2f}M)",
        f"- multiply-accumulates at {meta['input_size']}x{meta['input_size']}: {meta['macs'] / 1e9:.2f}G",
        f"- classes: {meta['num_classes']}; input {meta['input_size']}x{meta['input_size']}",
        f"- source: {json.dumps(meta['source'])}",
        "",
        "## Design choices",
        "",
    ]
    lines += [f"- `{k}` = `{v}`: {DESCRIPTIONS.get(k, '')}" for k, v in cfg.items()]
    lines += [
        "",
        "## Training (paper table 1, with timm's train.py)",
        "",
        "Add `import nexsearch` at the top of timm's train.py (it registers `nexsearch_net`), then:",
        "",
        "```",
        f"python train.py /path/to/imagenet --model nexsearch_net --model-kwargs config={weights.with_suffix('.json')} \\",
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
    from nexsearch.rundir import RunDir

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
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    for path in existing:  # --force: the old sidecar and card go before the new weights are written
        if path != out:
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must end in .safetensors, got {out.name}")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"cannot write {out}: folder {out.parent} is not writable")
    probe = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:  # before building the model: can a file be written there at all?
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}): choose another --out") from None
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
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    sidecar = out.with_suffix(".json")
    _atomic_write(sidecar, lambda p: p.write_text(json.dumps(meta, indent=2)))
    card = model_card(meta, out)
    _atomic_write(out.with_suffix(".md"), lambda p: p.write_text(card))
    paths = {"weights": str(out), "sidecar": str(sidecar), "card": str(out.with_suffix(".md"))}
    if onnx:
        onnx_path = out.with_suffix(".onnx")
        dummy = torch.zeros(1, 3, layout.input_size, layout.input_size)

        def write_onnx(p: Path) -> None:
            torch.onnx.export(model, (dummy,), str(p), dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)

        _atomic_write(onnx_path, write_onnx)
        paths["onnx"] = str(onnx_path)
    return {**meta, "paths": paths, "card": card, "chosen": chosen}


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
    """Rebuild an exported model from NAME.safetensors + NAME.json (eval mode)."""
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
    return model.to(device).eval()

"""Exports say what they are: untrained weights, what the configuration was chosen on; timm's train.py launcher."""

import json
import os
import subprocess
import sys

import pytest

from nexsearch.export import export_model, load_model
from nexsearch.runners.status import run_status


def test_export_says_untrained_and_what_it_was_chosen_on(random_run, tmp_path):
    out = tmp_path / "best.safetensors"
    export_model(random_run, out=out, size="t", incumbent=True)
    meta = json.loads(out.with_suffix(".json").read_text())
    inc = run_status(random_run)["incumbent"]
    assert meta["weights"]["trained"] is False and "untrained" in meta["weights"]["note"]
    assert meta["chosen_on"]["dataset"] == "synthetic" and meta["chosen_on"]["max_epochs"] == 9
    card = out.with_suffix(".md").read_text()
    assert "**The weights are untrained**" in card
    source = next(line for line in card.splitlines() if line.startswith("- source:"))
    assert source.startswith(f"- source: trial {inc['trial']} of the run {random_run.resolve()} (validation error "
                             f"{inc['error']:.4f}); chosen on synthetic at 16x16, proxy trials of up to 9 epochs")
    assert "{" not in source  # words, not JSON
    assert "python -m nexsearch.timm_train path/to/pytorch-image-models/train.py" in card
    with pytest.warns(UserWarning, match="untrained"):
        model = load_model(out)
    assert model.nexsearch_meta["weights"]["trained"] is False


TRAIN_PY = """
import argparse, json
import timm
from helper import VALUE  # a module beside the script, as timm's train.py imports its own folder's
p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("--model")
p.add_argument("--model-kwargs", nargs="*", default=[])
a = p.parse_args()
kwargs = dict(kv.split("=", 1) for kv in a.model_kwargs)
model = timm.create_model(a.model, **kwargs)
print(json.dumps({"data": a.data, "params": sum(x.numel() for x in model.parameters()), "helper": VALUE,
                  "name": __name__}))
"""


def test_timm_train_launcher_runs_a_train_script_with_nexsearch_models(tmp_path):
    out = tmp_path / "nx.safetensors"
    meta = export_model(preset="nexception", out=out, size="t")
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "train.py"
    script.write_text(TRAIN_PY)
    (tmp_path / "scripts" / "helper.py").write_text("VALUE = 42\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", "nexsearch.timm_train", str(script), "/data/imagenet", "--model", "nexsearch_net",
           "--model-kwargs", f"config={out.with_suffix('.json')}"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"data": "/data/imagenet", "params": meta["params"], "helper": 42, "name": "__main__"}
    # without the launcher timm does not know the model
    plain = subprocess.run([sys.executable, str(script), "/d", "--model", "nexsearch_net", "--model-kwargs",
                            f"config={out.with_suffix('.json')}"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert plain.returncode != 0 and "nexsearch_net" in plain.stderr
    missing = subprocess.run([sys.executable, "-m", "nexsearch.timm_train", str(tmp_path / "nope.py")],
                             capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2 and "not found" in missing.stderr and len(missing.stderr.splitlines()) == 1

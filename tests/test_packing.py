"""Packing trials by GPU memory (runners/packing.py): fake GPUs, and the estimate against measured CPU peaks."""

import subprocess
import sys

import pytest

from nexsearch.errors import UserError
from nexsearch.runners.packing import (
    FIXED_MB, GPU_MEMORY_RESOURCE, Calibration, GpuLedger, estimate_peak_mb, gpu_memory_resources, retry_alone,
    slots_per_gpu,
)
from nexsearch.search_space.presets import preset

PROBE = """
import sys, torch, torch.nn.functional as F
from timm.optim import create_optimizer_v2
from nexsearch.search_space.builder import build_model
from nexsearch.search_space.presets import preset
torch.set_num_threads(1)
width, batch = float(sys.argv[1]), int(sys.argv[2])
m = build_model(preset("nexception"), "proxy", num_classes=100, width=width, depth=1)
x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
opt = create_optimizer_v2(m, opt="lamb", lr=1e-3, weight_decay=0.02)
with torch.no_grad():
    m.eval(); m(x[:2]); m.train()
def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
with open("/proc/self/clear_refs", "w") as fh:  # the peak (VmHWM) starts again here: import peaks left out
    fh.write("5")
before = status_mb("VmRSS")
for _ in range(2):
    loss = F.cross_entropy(m(x), y); opt.zero_grad(); loss.backward(); opt.step()
print(status_mb("VmHWM") - before)
"""


def _measured_peak_mb(width, batch):
    """The rise of a fresh process's peak RSS (VmHWM, reset after the imports) over two training steps on the
    CPU (fp32)."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(width), str(batch)], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


def test_estimate_against_measured_cpu_peaks_and_its_calibration():
    sizes = [(0.25, 32), (0.5, 64)]
    estimates = [estimate_peak_mb(preset("nexception"), b, width=w, depth=1) - FIXED_MB for w, b in sizes]
    measured = [_measured_peak_mb(w, b) for w, b in sizes]
    assert estimates[1] > 3 * estimates[0] and measured[1] > 3 * measured[0]  # it scales with width and batch
    for est, peak in zip(estimates, measured):
        assert 0.5 < peak / est < 4, (peak, est)  # the raw estimate: the right size
    cal = Calibration(margin=1.0)
    cal.observe(estimates[0], {"peak_memory_mb": measured[0], "peak_memory_kind": "cuda_max_allocated"})
    assert cal.correct(estimates[1]) == pytest.approx(measured[1], rel=0.35)  # corrected by the first trial


def test_calibration_learns_only_from_cuda_peaks():
    cal = Calibration()
    assert cal.correct(100.0) == pytest.approx(110.0)
    cal.observe(100.0, {"peak_memory_mb": 5000.0, "peak_memory_kind": "process_max_rss"})
    cal.observe(100.0, {"peak_memory_mb": None, "peak_memory_kind": "cuda_max_allocated"})
    assert cal.ratios == []
    cal.observe(100.0, {"peak_memory_mb": 150.0, "peak_memory_kind": "cuda_max_allocated"})
    cal.observe(200.0, {"peak_memory_mb": 240.0, "peak_memory_kind": "cuda_max_allocated"})
    assert cal.correct(100.0) == pytest.approx(100.0 * 1.5 * 1.1)  # the largest ratio seen


def test_ledger_packs_trials_of_different_sizes_by_memory():
    ledger = GpuLedger({"gpu0": 10_000.0, "gpu1": 6_000.0})
    placed = []
    for key, mb in [("a", 4000), ("b", 4000), ("c", 1500), ("d", 3000), ("e", 2500)]:
        gpu = ledger.place(mb)
        placed.append(gpu)
        if gpu:
            ledger.hold(key, gpu, mb)
    assert placed == ["gpu0", "gpu0", "gpu1", "gpu1", None]  # e (2500) fits nowhere: 2000 and 1500 left
    assert ledger.free_mb("gpu0") == 2000 and ledger.free_mb("gpu1") == 1500
    ledger.release("a")
    assert ledger.place(2500) == "gpu0"
    assert ledger.place(9000, alone=True) is None  # both GPUs busy: the out-of-memory retry waits
    for key in ("b", "c", "d"):
        ledger.release(key)
    assert ledger.place(9000, alone=True) == "gpu0"
    assert GpuLedger({"gpu0": 1000.0}).place(5000) == "gpu0"  # larger than any GPU: alone, and fails honestly


def test_resources_slots_and_retry():
    assert gpu_memory_resources(81_559) == {GPU_MEMORY_RESOURCE: pytest.approx(73_403.1)}
    assert slots_per_gpu(81_559, 2_200) == 8 and slots_per_gpu(16_000, 2_200) == 6 and slots_per_gpu(1000, 2_200) == 1
    assert retry_alone({"status": "oom"}, retried=False) and not retry_alone({"status": "oom"}, retried=True)
    assert not retry_alone({"status": "crashed"}, retried=False)


def test_workers_per_gpu_auto_is_accepted_and_means_the_cpu_slots_without_cuda(monkeypatch):
    import torch

    from nexsearch.device import resolve_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_workers("auto", "auto", "cpu") >= 1
    assert resolve_workers(3, "auto", "cuda") == 3
    with pytest.raises(UserError, match="or auto"):
        resolve_workers("auto", "many", "cuda")


class _Value:
    def __init__(self, error=""):
        self.additional_info = {"error": error} if error else {}


class _Info:
    def __init__(self, config):
        self.config, self.seed, self.budget, self.instance = config, 0, 1.0, None


class _Future:
    def __init__(self, result=None, done=True):
        self._result, self._done = result, done

    def done(self):
        return self._done

    def result(self):
        if isinstance(self._result, Exception):
            raise self._result
        return self._result


class _FakeRunner:
    """What rerun_alone_if_oom reads of a SMAC Dask runner: pending futures, the client, the single worker."""

    def __init__(self, retry_result, pending):
        self._pending_trials, self.submitted, self.waited = pending, [], []
        runner = self

        class Client:
            def submit(self, fn, trial_info, pure):
                runner.submitted.append((fn, trial_info))
                return _Future(retry_result)

        self._client = Client()
        self._single_worker = type("W", (), {"run_wrapper": staticmethod(lambda **k: None)})()


def test_an_oom_trial_runs_again_alone_once():
    from nexsearch.runners.packing import is_oom_value, rerun_alone_if_oom

    oom = _Value("TrialFailed('oom: out of memory: CUDA out of memory. Tried to allocate 2.00 GiB')")
    assert is_oom_value(oom) and not is_oom_value(_Value("TrialFailed('crashed: ValueError: x')"))
    assert not is_oom_value(_Value())
    info = _Info({"a": 1})
    ok = (info, _Value())
    busy = _Future(done=False)
    runner = _FakeRunner(ok, [busy, _Future()])
    waited = []
    assert rerun_alone_if_oom((info, oom), runner, wait=waited.append) is ok  # the retry's result
    assert waited == [[busy]] and runner.submitted[0][1] is info  # after the others, then alone
    runner._client.submit = lambda *a, **k: pytest.fail("an OOM trial is retried once only")
    assert rerun_alone_if_oom((info, oom), runner, wait=waited.append)[1] is oom  # second OOM: recorded failed
    other = (_Info({"a": 2}), _Value("TrialFailed('crashed: boom')"))
    assert rerun_alone_if_oom(other, runner, wait=waited.append) is other  # not OOM: as it came
    lost = _FakeRunner(RuntimeError("worker lost"), [])
    first = (_Info({"a": 3}), oom)
    assert rerun_alone_if_oom(first, lost, wait=waited.append) is first  # the retry itself failed: first result


def test_workers_per_gpu_auto_from_the_command_line():
    """``--workers-per-gpu auto`` reaches the experiment as the word (trials packed by memory), a number as a
    number, anything else is argparse's one-line error naming the flag."""
    from nexsearch.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["run", "--budget", "1m", "--workers-per-gpu", "auto"]).workers_per_gpu == "auto"
    assert parser.parse_args(["run", "--budget", "1m", "--workers-per-gpu", "3"]).workers_per_gpu == 3
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["run", "--budget", "1m", "--workers-per-gpu", "many"])
    assert exc.value.code == 2

"""kill -9 series against ``nexsearch run`` (docs/reliability.md): what survives, what is lost, what drifts.

    python benchmarks/kill_series.py --kills 20 --budget 150s --out /tmp/kills1
    python benchmarks/kill_series.py --kills 10 --budget 150s --workers 2 --out /tmp/kills2

Starts ``nexsearch run --config experiments/digits_demo.yaml`` on a fresh run directory, kills it with
SIGKILL at a random moment (uniform between --min-s and --max-s after its start), starts the same
command again, and so on; after the last kill the run goes on to the end of its budget. After every
kill it reads the run's files as ``nexsearch status`` does (falling back to the last complete copy of a
truncated file) and at the end reports, per kill and in total:

* finished trials just before the kill and after the whole series (a trial finished before a kill
  and missing at the end is *lost*);
* RUNNING entries left by the kill, and how many of those were never evaluated again;
* the wall-clock time of the killed session against the time its budget accounting counted
  (the difference is the budget *lost* by that kill), and the whole run's drift: total wall time
  of all sessions minus the budget.

``--after-heartbeat`` counts the kill moment from the session's first heartbeat instead of its process
start (so kills hit a live search, not the start-up); ``--run-args '--max-epochs 1'`` passes flags on to
``nexsearch run``; ``--final-extra S`` gives the last session only S seconds beyond what the kills used.

Prints a Markdown table and one JSON object (``--json FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nexsearch.runners.budget import parse_budget  # noqa: E402
from nexsearch.rundir import RunDir  # noqa: E402
from nexsearch.runview import RunView  # noqa: E402


def _snapshot(run_dir: Path) -> dict:
    """Trials of the run as its readers see them: finished keys, RUNNING keys, used budget."""
    try:
        trials = RunView(run_dir).history.trials
    except Exception:  # no SMAC state yet (killed during start-up)
        trials = []
    key = lambda t: f"{t['config_id']}/{t['seed']}/{t['budget']}"  # noqa: E731
    try:
        state = RunDir(run_dir).read_state()
    except (OSError, ValueError):
        state = {}
    return {"finished": {key(t) for t in trials if t["status_name"] != "running"},
            "running": {key(t) for t in trials if t["status_name"] == "running"},
            "used_s": float(state.get("used_s", 0.0))}


def _group(pgid: int) -> list[int]:
    """Processes still alive in the killed run's process group (its Dask workers)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid:
                out.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError):
            pass
    return out


def _alive(run_dir: Path, proc: subprocess.Popen) -> float:
    """Wait until this session's heartbeat is in the state file; seconds since the start."""
    t0 = time.time()
    while proc.poll() is None:
        try:
            if RunDir(run_dir).read_state().get("pid") == proc.pid:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return time.time() - t0


def series(kills: int, budget: str, out: Path, workers: int, min_s: float, max_s: float, seed: int,
           after_heartbeat: bool = False, final_extra: float | None = None, extra: list[str] | None = None) -> dict:
    rng = random.Random(seed)
    cmd = [sys.executable, "-m", "nexsearch.cli", "run", "--config", str(REPO / "experiments" / "digits_demo.yaml"),
           "--budget", budget, "--out", str(out), "--workers", str(workers), *(extra or [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    rows, sessions_wall, load = [], 0.0, [os.getloadavg()[0]]
    for k in range(kills):
        before = _snapshot(out)
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                env=env, cwd=REPO, start_new_session=True)
        alive_after = _alive(out, proc) if after_heartbeat else 0.0
        wait = rng.uniform(min_s, max_s)
        try:
            proc.wait(timeout=wait)
            sessions_wall += time.time() - t0
            break  # the budget was spent before the kill
        except subprocess.TimeoutExpired:
            pass
        last = _snapshot(out)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wall = time.time() - t0
        sessions_wall += wall
        time.sleep(1.0)  # Dask's worker processes notice that their parent is gone
        orphans = _group(proc.pid)
        for pid in orphans:  # a worker still alive after its parent was killed: end it, as a reboot would
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        after = _snapshot(out)
        rows.append({"kill": k + 1, "after_s": round(wall, 2), "heartbeat_after_s": round(alive_after, 2), "finished_before_kill": len(last["finished"]),
                     "finished_after_kill": len(after["finished"]), "orphans": len(orphans),
                     "lost_at_kill": len(last["finished"] - after["finished"]), "running_left": len(after["running"]),
                     "running_keys": sorted(after["running"]), "counted_s": round(after["used_s"] - before["used_s"], 2),
                     "uncounted_s": round(wall - (after["used_s"] - before["used_s"]), 2),
                     "finished_keys": sorted(after["finished"])})
    t0 = time.time()
    if final_extra is not None:  # the last session: this much budget beyond what the kills used, not the whole rest
        cmd[cmd.index("--budget") + 1] = f"{_snapshot(out)['used_s'] + final_extra:.0f}s"
    final_proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
    sessions_wall += time.time() - t0
    load.append(os.getloadavg()[0])
    end = _snapshot(out)
    for r in rows:
        r["lost_at_end"] = len(set(r.pop("finished_keys")) - end["finished"])
        r["running_never_retried"] = len(set(r.pop("running_keys")) & end["running"])
    budget_s = parse_budget(budget)
    return {
        "budget_s": budget_s, "workers": workers, "kills": len(rows), "final_exit": final_proc.returncode,
        "finished_at_end": len(end["finished"]), "running_at_end": len(end["running"]),
        "lost_total": sum(r["lost_at_end"] for r in rows),
        "running_never_retried": sum(r["running_never_retried"] for r in rows),
        "orphaned_workers": sum(r["orphans"] for r in rows),
        "used_s": round(end["used_s"], 1), "wall_s": round(sessions_wall, 1),
        "drift_s": round(sessions_wall - end["used_s"], 1),
        "uncounted_per_kill_s": {"mean": round(sum(r["uncounted_s"] for r in rows) / max(1, len(rows)), 2),
                                 "max": max((r["uncounted_s"] for r in rows), default=0.0)},
        "after_heartbeat": after_heartbeat, "load_avg_1m": load, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = ["| kill | after (s) | finished before | finished after | lost | RUNNING left | never retried "
             "| counted (s) | uncounted (s) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['kill']} | {r['after_s']:.1f} | {r['finished_before_kill']} | {r['finished_after_kill']} "
                     f"| {r['lost_at_end']} | {r['running_left']} | {r['running_never_retried']} | {r['counted_s']:.1f} "
                     f"| {r['uncounted_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--budget", default="150s")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True, help="a new run directory")
    p.add_argument("--min-s", type=float, default=2.0, help="earliest kill after a start (s)")
    p.add_argument("--max-s", type=float, default=25.0, help="latest kill after a start (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--after-heartbeat", action="store_true",
                   help="count the kill moment from the session's first heartbeat (the run is alive) instead of "
                        "from the process start: kills hit trials, not the start-up")
    p.add_argument("--final-extra", type=float, help="last session: the budget used by then plus this many "
                   "seconds (default: the rest of --budget)")
    p.add_argument("--run-args", help="more flags for nexsearch run, e.g. '--max-epochs 1'")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        p.error(f"{out} exists: pass a new run directory")
    result = series(args.kills, args.budget, out, args.workers, args.min_s, args.max_s, args.seed,
                    args.after_heartbeat, args.final_extra, args.run_args.split() if args.run_args else None)
    result["command"] = shlex.join(["python", *sys.argv])
    print(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

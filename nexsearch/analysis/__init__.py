"""Analysis of run histories: pandas tables, DeepCAVE importance, plots."""

from nexsearch.analysis.run import Run, Runs, load_run, load_runs

__all__ = ["Run", "Runs", "load_run", "load_runs"]

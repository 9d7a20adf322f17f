"""Runners: SMAC facades, budgets, resume, Dask workers, progress, status."""

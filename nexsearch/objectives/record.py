"""The trial record: one trial's (or one evaluation training's) result, as ``trials.jsonl`` keeps it.

``TrialRecord`` has the fields every record has; what the trainer measured and what the objectives' producers
made (their keys: ``objectives/table.py``) are its ``measures``. ``to_json()`` is the line written to the log
(the configuration as a plain dict); as a read-only mapping it answers the same keys, the configuration as it
came (SMAC's ``Configuration``: it is not converted and checked again by the producers). No torch here.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

_TAIL = ("start_time", "end_time", "host", "pid")  # written last, where known


@dataclass
class TrialRecord(Mapping):
    status: str  # ok, timeout, oom, diverged, crashed, cut
    reason: str
    config: Any  # the Configuration (or mapping) trained
    seed: int
    budget: float | None
    cost: float | None = None  # None: no cost (a trial cut before it started)
    curve: list[dict[str, float]] = field(default_factory=list)
    measures: dict[str, Any] = field(default_factory=dict)
    start_time: float | None = None
    end_time: float | None = None
    host: str | None = None
    pid: int | None = None

    def finished(self, started: float) -> TrialRecord:
        """This record with when (from ``started`` to now), where and by which process the trial ran."""
        self.start_time, self.end_time, self.host, self.pid = started, time.time(), socket.gethostname(), os.getpid()
        return self

    def merge(self, values: Mapping[str, Any]) -> TrialRecord:
        """Take ``values`` (a producer's fields: a record field such as ``status`` sets it, the rest are measures)."""
        own = {f.name for f in fields(self)} - {"measures"}
        for key, value in values.items():
            if key in own:
                setattr(self, key, value)
            else:
                self.measures[key] = value
        return self

    def _items(self) -> Iterator[tuple[str, Any]]:
        yield "status", self.status
        yield "reason", self.reason
        if self.cost is not None:
            yield "cost", self.cost
        yield from self.measures.items()
        yield from (("budget", self.budget), ("seed", self.seed), ("curve", self.curve), ("config", self.config))
        yield from ((key, getattr(self, key)) for key in _TAIL if getattr(self, key) is not None)

    def to_json(self) -> dict[str, Any]:
        """The record as the trial log's line (the configuration a plain dict of its active values)."""
        from nexsearch.search_space.space import to_dict

        return {k: to_dict(v) if k == "config" else v for k, v in self._items()}

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items():
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items())

    def __len__(self) -> int:
        return sum(1 for _ in self._items())

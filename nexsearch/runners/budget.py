"""Wall-clock budgets written like ``45s``, ``90m`` (or ``90min``), ``1.5h``, ``1h30m``, ``3d`` or ``1d12h``."""

from __future__ import annotations

import re

from nexsearch.errors import UserError

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_BUDGET_S = 366 * 86400  # a year: anything longer is a typo (and overflows the clocks it is added to)
# longer unit words first: ``90min`` is 90 minutes, ``2hours`` two hours (the first letter names the unit)
_PART = re.compile(r"(\d+(?:\.\d+)?)(days?|hours?|hrs?|minutes?|mins?|seconds?|secs?|[dhms])")


def parse_budget(text: str | int | float) -> float:
    """Seconds in a budget string; a bare number means seconds. Raises ``UserError`` otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        if s.startswith("-"):
            raise UserError(f"bad budget '{text}': a budget must be positive, e.g. {s[1:] or '90m'}")
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        else:
            parts = _PART.findall(s)
            units = [u[0] for _, u in parts]
            if not parts or "".join(n + u for n, u in parts) != s or len(set(units)) != len(units) or units != sorted(
                units, key=list(_UNITS).index
            ):
                raise UserError(
                    f"bad budget '{text}': write a duration like 45s, 90m, 90min, 1.5h, 1h30m, 3d or 1d12h "
                    "(units d, h, m or min, s; largest first)"
                )
            seconds = sum(float(n) * _UNITS[u[0]] for n, u in parts)
    if not seconds > 0:
        raise UserError(f"bad budget '{text}': it must be longer than zero")
    if not seconds <= MAX_BUDGET_S:
        raise UserError(f"bad budget '{text}': at most {MAX_BUDGET_S // 86400} days (366d)")
    return seconds


def format_duration(seconds: float) -> str:
    """``93784`` -> ``1d02h03m04s``; short durations stay short (``42s``, ``3m05s``)."""
    seconds = max(0, int(round(seconds)))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m{s:02d}s"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"

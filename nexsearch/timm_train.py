"""Run timm's own ``train.py`` with nexsearch's models registered (``nexsearch_net``, ``nexception_t``, ...)::

    python -m nexsearch.timm_train PATH/TO/pytorch-image-models/train.py /path/to/imagenet \\
        --model nexsearch_net --model-kwargs config=NAME.json ...

timm's scripts are not part of its package: clone pytorch-image-models for ``train.py``. The script runs
as ``__main__`` with its own folder first on ``sys.path`` and the arguments after its path, as
``python train.py ARGS...`` would run it, but with ``nexsearch``'s timm models registered first.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

USAGE = "usage: python -m nexsearch.timm_train PATH/TO/train.py [ARGS...]"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.strip().splitlines()[0], file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    script = Path(argv[0])
    if not script.is_file():
        print(f"nexsearch.timm_train: {script} not found: pass the path of timm's train.py "
              "(from a clone of pytorch-image-models)", file=sys.stderr)
        raise SystemExit(2)
    import nexsearch.search_space.timm_models  # noqa: F401  (registers nexsearch's models with timm)

    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()

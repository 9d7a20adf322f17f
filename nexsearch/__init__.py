"""nexsearch: neural architecture search over the NEXcepTion design space with SMAC.

``import nexsearch`` registers the paper's models with timm (``nexception_t``,
``nexception_s``, ``nexception_tp``, ``xception_nexsearch``, ``nexsearch_net``).
"""

__version__ = "0.1.0"

from nexsearch.search_space import timm_models as _timm_models  # noqa: F401,E402  (registers with timm)
from nexsearch.export import load_model  # noqa: E402
from nexsearch.search_space.builder import build_model  # noqa: E402
from nexsearch.search_space.presets import PRESETS, preset  # noqa: E402
from nexsearch.search_space.space import SPACE  # noqa: E402

__all__ = ["SPACE", "PRESETS", "build_model", "load_model", "preset", "__version__"]

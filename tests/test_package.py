"""`import nexsearch` stays cheap (the CLI answers at once) and still registers the models with timm."""

import subprocess
import sys


def _py(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_loads_no_heavy_library():
    loaded = _py("import sys, nexsearch.cli; print(sorted(m for m in ('torch', 'timm', 'ConfigSpace', 'smac') "
                 "if m in sys.modules))")
    assert loaded == "[]"


def test_timm_registration_in_either_import_order():
    assert _py("import nexsearch, timm; print(timm.is_model('nexception_t'), timm.is_model('nexsearch_net'))") \
        == "True True"
    assert _py("import timm, nexsearch; print(timm.is_model('nexception_tp'))") == "True"
    # the builder's own import of timm fires the registration while the builder is half-imported
    assert _py("import nexsearch; m = nexsearch.build_model(nexsearch.preset('xception'), 'proxy', width=0.125); "
               "import timm; print(type(m).__name__, timm.is_model('xception_nexsearch'))") == "NexNet True"

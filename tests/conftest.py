import importlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REQUIRED = {name for name in os.environ.get("LOVASZ_REQUIRE", "").split(",") if name}


def require(module: str):
    """Import a framework: skip when it is absent, unless CI meant to install it (LOVASZ_REQUIRE)."""
    top = module.split(".")[0]
    if top in REQUIRED:
        return importlib.import_module(module)  # a missing framework fails loudly
    return pytest.importorskip(module)
collect_ignore = ["keras_checks.py"]  # run per backend, in its own process, by test_keras.py

"""Peer implementations for tests and benchmarks: the original, loaded by path from
segmentation-models-pytorch 0.6.0 (its copy of ``pytorch/lovasz_losses.py``).

The package's ``__init__`` imports timm and torchvision, so the file is loaded alone,
with its one relative import (the mode constants) stubbed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def load_original() -> types.ModuleType | None:
    """Return the original ``lovasz.py`` module, or None when segmentation-models-pytorch is not installed."""
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "losses" / "lovasz.py"
    pkg = types.ModuleType("_smp_losses")
    pkg.__path__ = [str(path.parent)]
    constants = types.ModuleType("_smp_losses.constants")
    vars(constants).update(BINARY_MODE="binary", MULTICLASS_MODE="multiclass", MULTILABEL_MODE="multilabel")
    sys.modules.setdefault("_smp_losses", pkg)
    sys.modules.setdefault("_smp_losses.constants", constants)
    module_spec = importlib.util.spec_from_file_location("_smp_losses.lovasz", path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load the original from {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module

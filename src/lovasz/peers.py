"""Peer implementations for tests and benchmarks: the original, loaded by path from
segmentation-models-pytorch 0.6.0 (its copy of ``pytorch/lovasz_losses.py``), and the original
TensorFlow file (``tensorflow/lovasz_losses_tf.py``), which ships in ``_peers`` (see its README).

The package's ``__init__`` imports timm and torchvision, so the file is loaded alone,
with its one relative import (the mode constants) stubbed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


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


_ORIGINAL_TF = Path(__file__).parent / "_peers" / "lovasz_losses_tf.py"


class _TF2:
    """``tensorflow`` as the original TF file calls it: its ``tf.cond(..., strict=True)`` is TF 1's, which TF 2
    keeps as ``tf.compat.v1.cond``; every other name is TensorFlow's own."""

    def __init__(self, tf: types.ModuleType):
        self._tf = tf

    def __getattr__(self, name: str) -> Any:
        return self._tf.compat.v1.cond if name == "cond" else getattr(self._tf, name)


def load_original_tf() -> types.ModuleType:
    """The original ``tensorflow/lovasz_losses_tf.py``, unchanged, run against TensorFlow 2."""
    import warnings

    import tensorflow as tf

    module = types.ModuleType("lovasz_losses_tf")
    module.__file__ = str(_ORIGINAL_TF)
    with warnings.catch_warnings():  # its docstrings' "\i" (an invalid escape since Python 3.6)
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        code = compile(_ORIGINAL_TF.read_text(), str(_ORIGINAL_TF), "exec")
    exec(code, vars(module))
    vars(module)["tf"] = _TF2(tf)
    return module

"""Keras 3 losses on each backend: keras_checks.py runs in its own process per backend."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

CHECKS = Path(__file__).with_name("keras_checks.py")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras_backend(backend, tmp_path):
    require("keras")
    require({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "--no-header",
            f"--basetemp={tmp_path}",
            "--rootdir",
            str(CHECKS.parent),
            str(CHECKS),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]

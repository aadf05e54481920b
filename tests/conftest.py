import functools
import importlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REQUIRED = {name for name in os.environ.get("LOVASZ_REQUIRE", "").split(",") if name}
# The PyTorch tests give the library tensors on this device (LOVASZ_TEST_DEVICE=cuda, cuda:1, mps, ...).
DEVICE_NAME = os.environ.get("LOVASZ_TEST_DEVICE", "").strip() or "cpu"


def require(module: str):
    """Import a framework: skip when it is absent, unless CI meant to install it (LOVASZ_REQUIRE)."""
    top = module.split(".")[0]
    if top in REQUIRED:
        return importlib.import_module(module)  # a missing framework fails loudly
    return pytest.importorskip(module)


@functools.cache
def torch_device():
    """The torch.device of LOVASZ_TEST_DEVICE; a UsageError (the run fails) if it is not a working device."""
    try:
        import torch
    except ImportError:
        raise pytest.UsageError(f"LOVASZ_TEST_DEVICE={DEVICE_NAME} but torch is not installed") from None
    try:
        device = torch.device(DEVICE_NAME)
    except RuntimeError as error:
        raise pytest.UsageError(f"LOVASZ_TEST_DEVICE={DEVICE_NAME} is not a torch device: {error}") from None
    if device.type == "meta":
        raise pytest.UsageError("LOVASZ_TEST_DEVICE=meta holds no data: name a real device (cpu, cuda, ...)")
    try:
        probe = torch.ones(2, device=device)
        assert (probe + 1).sum().item() == 4
    except Exception as error:  # absent: "Torch not compiled with CUDA enabled", "no NVIDIA driver", bad index
        raise pytest.UsageError(
            f"LOVASZ_TEST_DEVICE={DEVICE_NAME} but that device is not available here ({type(error).__name__}: {error})"
        ) from None
    return probe.device  # "cuda" -> "cuda:0"


def dev(x):
    """A tensor (or NumPy array) on the test device; data made on the CPU stays identical on every device."""
    import torch

    return torch.as_tensor(x, device=torch_device())


def tf_value_and_grad(loss, x, mode: str = "eager") -> list:
    """``loss(x)`` and its gradient in ``x``, NumPy arrays, eagerly or in a ``tf.function`` (``mode``)."""
    import tensorflow as tf

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x)
        return value, tape.gradient(value, x)

    return [t.numpy() for t in (tf.function(run) if mode == "function" else run)(tf.convert_to_tensor(x))]


def cuda_devices(monkeypatch, count: int) -> None:
    """The machine as torch sees it: ``count`` CUDA devices (the CLIs' device messages list what there is)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def host(t):
    """A tensor as a NumPy array on the host, for comparisons."""
    return t.detach().cpu().numpy()


def pytest_configure(config):
    if DEVICE_NAME != "cpu":  # the CPU is always there; torch is imported only when another device is asked for
        torch_device()


def pytest_report_header(config):
    return f"lovasz test device (LOVASZ_TEST_DEVICE): {DEVICE_NAME}"


@pytest.fixture
def jax_on_the_cpu():
    """JAX's default device the CPU during the test: for tests of the C kernel's route, a host callback that
    ``platform_dependent`` takes on the CPU only (where the default device is a GPU, it takes the sorts)."""
    import jax

    with jax.default_device(jax.devices("cpu")[0]):
        yield


@pytest.fixture(autouse=True)
def jax_x64_as_it_was():
    """JAX's float64 switch back to what it was after each test: the tests that turn it on for float64 inputs
    would otherwise leave it on for the tests after them in the process, which then would not test JAX's
    default (float32 everywhere) that users run."""
    jax = sys.modules.get("jax")
    before = bool(jax.config.jax_enable_x64) if jax is not None else None
    yield
    jax = sys.modules.get("jax")
    if jax is None:
        return
    if before is None:  # imported during the test: JAX's default, from its environment variable
        before = os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true", "yes", "on")
    if bool(jax.config.jax_enable_x64) != before:
        jax.config.update("jax_enable_x64", before)


collect_ignore = ["keras_checks.py"]  # run per backend, in its own process, by test_keras.py


@pytest.fixture(params=["openmp team", "pool"])
def executor(request, monkeypatch):
    """The C kernel's blocks on torch's OpenMP team (its libgomp loaded by importing torch), or on the
    kernel's own thread pool."""
    ckernel = require("lovasz._ckernel")
    if request.param == "pool":
        monkeypatch.setattr(ckernel, "_team", lambda: None)
        return request.param
    if importlib.util.find_spec("torch") is not None:
        importlib.import_module("torch")
    if ckernel._team() is None:
        pytest.skip("no libgomp loaded (not Linux, no torch, or a torch built without OpenMP)")
    return request.param

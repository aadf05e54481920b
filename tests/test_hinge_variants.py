"""The hinge variants of practice, ELU+1 and symmetric, against the oracle and an independent
port of the Kaggle code they come from; the oracle's variants by their definitions."""

import numpy as np
import pytest

from conftest import dev, host, require
from lovasz import reference as R

torch = require("torch")
L = require("lovasz.torch")


def kaggle_hinge_flat(logits, labels, elu=False):
    """The TGS Salt / Airbus kernels' ``lovasz_hinge_flat``: sort the margins, ``elu(m) + 1`` or ``relu(m)``."""
    signs = 2.0 * labels.double() - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt_sorted = labels[perm].double()
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    value = torch.nn.functional.elu(errors_sorted) + 1 if elu else torch.relu(errors_sorted)
    return torch.dot(value, jaccard)


def kaggle_symmetric(logits, labels, elu=False):
    return (kaggle_hinge_flat(logits, labels, elu) + kaggle_hinge_flat(-logits, 1 - labels, elu)) / 2


@pytest.mark.parametrize("elu", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_oracle_equals_the_kaggle_code(elu, symmetric):
    rng = np.random.default_rng(0)
    for _ in range(5):
        logits, labels = rng.normal(size=40) * 2, rng.integers(0, 2, 40)
        fn = kaggle_symmetric if symmetric else kaggle_hinge_flat
        expected = fn(torch.from_numpy(logits), torch.from_numpy(labels), elu).item()
        got = R.lovasz_hinge(logits[None], labels[None], margin="elu" if elu else "relu", symmetric=symmetric)
        assert got == pytest.approx(expected, rel=1e-12)


def test_oracle_elu_errors_by_definition():
    m = np.array([2.0, 0.0, -1.0, -30.0])
    logits, labels = 1 - m, np.ones(4, int)  # margins m for foreground pixels
    expected = R.lovasz_extension(np.where(m > 0, m, np.exp(m) - 1) + 1, labels)
    assert R.lovasz_hinge_flat(logits, labels, "elu") == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("margin", ["relu", "elu"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_torch_matches_the_oracle_values_and_gradients(margin, symmetric, per_image, ignore):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, 2, (3, 4, 5, 6), generator=g)
    if ignore is not None:
        targets[torch.rand(targets.shape, generator=g) < 0.2] = ignore
    options = dict(per_image=per_image, ignore=ignore, margin=margin, symmetric=symmetric)
    for fn, oracle, x, y, extra in [
        (L.lovasz_hinge, R.lovasz_hinge, logits[:, 0], targets[:, 0], {}),
        (L.lovasz_multilabel, R.lovasz_multilabel, logits, targets, {"classes": "present"}),
        (L.lovasz_multilabel, R.lovasz_multilabel, logits, targets, {"classes": [2, 0], "weights": [1, 2, 3, 4]}),
    ]:
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            a = dev(x).to(dtype, copy=True).requires_grad_()
            loss = fn(a, dev(y), **options, **extra)
            loss.backward()
            expected = oracle(x.numpy(), y.numpy(), **options, **extra)
            np.testing.assert_allclose(host(loss), expected, rtol=tol, atol=tol)
            if dtype == torch.float64:  # central differences of the oracle
                grad = np.zeros(x.shape)
                for index in np.ndindex(x.shape):
                    up, down = x.numpy().copy(), x.numpy().copy()
                    up[index] += 1e-6
                    down[index] -= 1e-6
                    grad[index] = (
                        oracle(up, y.numpy(), **options, **extra) - oracle(down, y.numpy(), **options, **extra)
                    ) / 2e-6
                np.testing.assert_allclose(host(a.grad), grad, rtol=1e-5, atol=1e-7)


def test_elu_keeps_a_gradient_where_relu_has_none():
    logits = dev(torch.tensor([[5.0, -5.0]])).requires_grad_()  # both pixels right by a margin: relu errors 0
    labels = dev(torch.tensor([[1, 0]]))
    L.lovasz_hinge(logits, labels).backward()
    assert torch.count_nonzero(logits.grad) == 0
    logits.grad = None
    L.lovasz_hinge(logits, labels, margin="elu").backward()
    assert torch.count_nonzero(logits.grad) > 0  # (a pixel's Jaccard step itself may be 0)


def test_modules_take_the_variants():
    g = torch.Generator().manual_seed(1)
    x, y = dev(torch.randn(2, 3, 4, 4, generator=g)), dev(torch.randint(0, 2, (2, 3, 4, 4), generator=g))
    expected = L.lovasz_multilabel(x, y, per_image=False, margin="elu", symmetric=True)
    module = L.LovaszLoss("multilabel", margin="elu", symmetric=True)
    torch.testing.assert_close(module(x, y), expected)
    assert "margin='elu'" in repr(module) and "symmetric=True" in repr(module)
    torch.testing.assert_close(
        L.LovaszLoss("binary", symmetric=True)(x[:, :1], y[:, 0]),
        L.lovasz_hinge(x[:, 0], y[:, 0], per_image=False, symmetric=True),
    )
    combined = L.CrossEntropyLovaszLoss("binary", ce_weight=0.0, margin="elu")
    torch.testing.assert_close(
        combined(x[:, :1], y[:, 0]), L.lovasz_hinge(x[:, 0], y[:, 0], per_image=False, margin="elu")
    )


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: L.lovasz_hinge(torch.randn(2, 4), torch.zeros(2, 4), margin="gelu"), ValueError, ["margin", "'gelu'"]),
        (lambda: L.lovasz_hinge(torch.randn(2, 4), torch.zeros(2, 4), symmetric="yes"), TypeError, ["symmetric"]),
        (
            lambda: L.lovasz_multilabel(torch.rand(2, 3, 4), torch.zeros(2, 3, 4), from_logits=False, margin="elu"),
            ValueError,
            ["from_logits=True"],
        ),
        (lambda: L.LovaszLoss("multiclass", symmetric=True), ValueError, ["multiclass", "symmetric"]),
    ],
)
def test_bad_variants_raise_clear_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("jit", [False, True])
def test_jax_matches_the_oracle(jit):
    jax = require("jax")
    jax.config.update("jax_enable_x64", True)
    LJ = require("lovasz.jax")
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 4, 5, 6)) * 2
    targets = rng.integers(0, 2, (3, 4, 5, 6))
    targets[rng.random(targets.shape) < 0.2] = 255
    for margin in ("relu", "elu"):
        for per_image in (False, True):
            options = dict(per_image=per_image, ignore=255, margin=margin, symmetric=True)
            for fn, oracle, x, y in [
                (LJ.lovasz_hinge, R.lovasz_hinge, logits[:, 0], targets[:, 0]),
                (LJ.lovasz_multilabel, R.lovasz_multilabel, logits, targets),
            ]:
                call = jax.jit(lambda a, b: fn(a, b, **options)) if jit else (lambda a, b: fn(a, b, **options))
                np.testing.assert_allclose(
                    float(call(jax.numpy.asarray(x), jax.numpy.asarray(y))), oracle(x, y, **options), rtol=1e-10
                )
                grad = jax.grad(lambda a: fn(a, jax.numpy.asarray(y), **options))(jax.numpy.asarray(x))
                a = torch.tensor(x, requires_grad=True)
                getattr(L, fn.__name__)(a, torch.from_numpy(y), **options).backward()
                np.testing.assert_allclose(np.asarray(grad), a.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_tf_matches_the_oracle(mode):
    tf = require("tensorflow")
    LT = require("lovasz.tf")
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(3, 5, 6, 4)) * 2  # channels-last, lovasz.tf's default
    targets = rng.integers(0, 2, (3, 5, 6, 4))
    targets[rng.random(targets.shape) < 0.2] = 255
    for margin in ("relu", "elu"):
        for per_image in (False, True):
            options = dict(per_image=per_image, ignore=255, margin=margin, symmetric=True)
            for fn, x, y, expected in [
                (
                    LT.lovasz_hinge,
                    logits[..., 0],
                    targets[..., 0],
                    R.lovasz_hinge(logits[..., 0], targets[..., 0], **options),
                ),
                (
                    LT.lovasz_multilabel,
                    logits,
                    targets,
                    R.lovasz_multilabel(np.moveaxis(logits, -1, 1), np.moveaxis(targets, -1, 1), **options),
                ),
            ]:
                for dtype, tol in ((tf.float64, 1e-10), (tf.float32, 1e-5)):
                    call = lambda a, b: fn(a, b, **options)  # noqa: E731
                    if mode != "eager":
                        call = tf.function(call, jit_compile=mode == "xla")
                    got = call(tf.constant(x, dtype), tf.constant(y))
                    np.testing.assert_allclose(float(got), expected, rtol=tol, atol=tol)


def test_keras_losses_take_the_variants():
    require("tensorflow")
    K = require("lovasz.keras")
    loss = K.LovaszHingeLoss(margin="elu", symmetric=True)
    config = loss.get_config()
    assert config["margin"] == "elu" and config["symmetric"] is True
    assert type(loss).from_config(config).get_config() == config
    multi = K.LovaszMultilabelLoss(margin="elu", symmetric=True, per_image=False)
    rng = np.random.default_rng(7)
    logits, targets = rng.normal(size=(2, 4, 5, 3)), rng.integers(0, 2, (2, 4, 5, 3))
    expected = R.lovasz_multilabel(
        np.moveaxis(logits, -1, 1), np.moveaxis(targets, -1, 1), per_image=False, margin="elu", symmetric=True
    )
    np.testing.assert_allclose(float(multi(targets, logits.astype("float32"))), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="from_logits=True"):
        K.LovaszMultilabelLoss(from_logits=False, margin="elu")

"""Unit tests that other projects wrote for their own Lovász losses, ported to lovasz.torch.

Their hard-coded expectations are kept as they are: they are independent checks. Where a
peer asserts a behaviour we change on purpose, the test asserts the opposite and names the
row of README's Migrating tables; where a peer's test cannot apply, a comment says why.

Ported from (repository, path, commit):

- kornia/kornia, tests/losses/test_lovaz_softmax.py (b4f5a78a13891c7ac4c1cd9695941380273e981d,
  and 06dd649e702d627985ddfcc79497010a686fe3a3 for test_foreground_reference,
  test_class_permutation, test_foreground_gradient_reference, test_dynamo_foreground);
- kornia/kornia, tests/losses/test_lovaz_hinge.py (b4f5a78a13891c7ac4c1cd9695941380273e981d,
  and 417556ee3750afe1d33770f345456174a7cdc8b3 for test_output_dtype_follows_the_prediction,
  test_default_dtype_does_not_change_the_loss, test_float64_matches_a_float64_reference);
- open-mmlab/mmsegmentation, tests/test_models/test_losses/test_lovasz_loss.py
  (156c36c5fd745cd1e8834668c336fbb1d9a34c6e; 28b573354b76a2bd79e8974a7585dd574b6d7090 is the same
  without loss_name);
- kozistr/pytorch_optimizer, tests/test_loss_functions.py, test_lovasz_hinge_loss
  (7a076d2f8f09735e82f9ec1d2d389ec2526bbdbb, and the 2x2 variant of 7dfa938e0867f3bb40449a88f4b89365187434e8);
- catalyst-team/catalyst, tests/contrib/nn/test_criterion.py, test_criterion_init (its Lovász classes;
  e99f90655d0efcf22559a46e928f0f98c9807ebf).

Looked at, nothing to port: qubvel-org/segmentation_models.pytorch tests/test_losses.py has no Lovász
test in any of its 28 versions (5006616357631a48c7c8e11977cf5abb00803590 and history);
BloodAxe/pytorch-toolbelt (05e07ac7f0a240061a334d5dd6598ea9ae7c3264) and isaaccorley/torchseg test no
Lovász loss; Project-MONAI/MONAI has none.

Kornia's ``lovasz_softmax_loss(pred, target)`` is ``lovasz_softmax(pred, target, classes='all',
per_image=True, from_logits=True)`` here, its ``LovaszSoftmaxLoss()`` is
``LovaszLoss('multiclass', True, classes='all')``; its ``lovasz_hinge_loss`` is ``lovasz_hinge``
(per image by default in both), its ``LovaszHingeLoss()`` is ``LovaszLoss('binary', True)``.
Kornia's ``torch_optimizer`` fixture compiles with inductor by default; here ``aot_eager`` keeps the
file fast (inductor is covered in tests/test_torch_edges.py). Kornia's dtype fixture becomes a
parametrisation over float32 and float64, with kornia's tolerances.
"""

import numpy as np
import pytest

from conftest import dev, host, require, torch_device
from lovasz import reference as R

torch = require("torch")
L = require("lovasz.torch")

# kornia's testing/base.py _DTYPE_PRECISIONS: (rtol, atol)
KORNIA_TOL = {
    torch.bfloat16: (7.8e-3, 7.8e-3),
    torch.float16: (1e-3, 1e-3),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-5, 1e-5),
}
DTYPES = [torch.float32, torch.float64]


def kornia_close(actual, expected, rtol=None, atol=None):
    """kornia's BaseTester.assert_close, on the host."""
    actual = torch.as_tensor(actual).detach().cpu()
    expected = torch.as_tensor(expected, dtype=actual.dtype).detach().cpu()
    if rtol is None and atol is None:
        rtol, atol = KORNIA_TOL.get(actual.dtype, (0.0, 0.0))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, check_stride=False)


def k_softmax(pred, target, weight=None, **kw):
    """kornia.losses.lovasz_softmax_loss, translated (weights aside: see test_kornia_softmax_weight)."""
    return L.lovasz_softmax(pred, target, classes="all", per_image=True, from_logits=True, weights=weight, **kw)


def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


# ============================================================================ kornia: Lovász-Softmax


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_softmax_smoke(dtype):
    num_classes = 3
    logits = dev(torch.rand(2, num_classes, 1, 1, dtype=dtype))
    labels = dev((torch.rand(2, 1, 1) * num_classes).long())
    criterion = L.LovaszLoss("multiclass", True, classes="all")
    loss = criterion(logits, labels)
    assert loss is not None and loss.shape == () and torch.isfinite(loss)


def test_kornia_softmax_exception():
    criterion = L.LovaszLoss("multiclass", True, classes="all")
    # kornia: ShapeError "Shape dimension mismatch" / "Expected shape"; here a ValueError naming the shapes
    with pytest.raises(ValueError, match="shape"):
        criterion(dev(torch.rand(1)), dev(torch.rand(1)))
    with pytest.raises(ValueError, match="shape"):
        criterion(dev(torch.rand(1, 1, 1, 1)), dev(torch.rand(1)))
    # kornia: ValueError "Invalid pred shape, we expect BxNxHxW, with N > 1." Opposite here, on purpose
    # (README, Migrating, "From kornia": row "one class channel"): one channel is sigmoid output. Their
    # target rand(1, 1, 1) holds fractions, which are not class indices: that is still an error (checked
    # on the CPU only: on an accelerator the label check is a device-side assert, see test_torch_edges.py).
    assert torch.isfinite(criterion(dev(torch.rand(1, 1, 1, 1)), dev(torch.zeros(1, 1, 1, dtype=torch.long))))
    with pytest.raises(ValueError, match="whole number"):
        criterion(torch.rand(1, 1, 1, 1), torch.rand(1, 1, 1) * 0.5 + 0.25)
    # kornia: "pred and target shapes must be the same. Got:"
    with pytest.raises(ValueError, match="must have shape"):
        criterion(dev(torch.rand(1, 2, 1, 1)), dev(torch.rand(1, 1, 2)))
    # kornia: "pred and target must be in the same device. Got:"
    with pytest.raises(ValueError, match="device"):
        criterion(dev(torch.rand(1, 2, 1, 1)), torch.rand(1, 1, 1, device="meta"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_softmax_binary(dtype):
    # kornia: one channel raises. Opposite here, on purpose (README, Migrating, "From kornia": row
    # "one class channel"): the channel is read as sigmoid output, the two classes [1 - p, p].
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(2, 1, 3, 2, generator=g, dtype=dtype)
    labels = (torch.rand(2, 3, 2, generator=g) * 1).long()
    loss = L.LovaszLoss("multiclass", True, classes="all")(dev(logits), dev(labels))
    p = 1 / (1 + np.exp(-host(logits[:, 0]).astype(np.float64)))
    expected = R.lovasz_softmax(np.stack([1 - p, p], axis=1), host(labels), classes="all", per_image=True)
    kornia_close(loss, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_softmax_all_ones(dtype):
    num_classes = 2
    # perfect prediction: softmax(prediction)[:, 1] == 1, softmax(prediction)[:, 0] == 0
    prediction = torch.zeros(2, num_classes, 1, 2, dtype=dtype)
    prediction[:, 1] = 100.0
    labels = torch.ones(2, 1, 2, dtype=torch.int64)
    loss = L.LovaszLoss("multiclass", True, classes="all")(dev(prediction), dev(labels))
    kornia_close(loss, torch.zeros_like(loss), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_softmax_weight(dtype):
    num_classes = 2
    prediction = torch.zeros(2, num_classes, 1, 2, dtype=dtype)
    prediction[:, 0] = 100.0  # every pixel predicted as class 0, every label is 1: both class losses are 1
    labels = torch.ones(2, 1, 2, dtype=torch.int64)
    weight = torch.tensor([1.0, 0.0], dtype=dtype)
    loss = L.LovaszLoss("multiclass", True, classes="all", class_weights=dev(weight))(dev(prediction), dev(labels))
    # kornia expects 0.5 = (1 * 1 + 0 * 1) / C. We divide by the weight sum on purpose (README, Migrating,
    # "From kornia": row "class weights"), so the loss is 1; the table's recipe gives kornia's 0.5.
    kornia_close(loss, 1.0, rtol=1e-3, atol=1e-3)
    kornia_close(loss * weight.sum().item() / num_classes, 0.5, rtol=1e-3, atol=1e-3)


FOREGROUND_PROBABILITIES = [[[[0.6, 0.21, 0.12]], [[0.29, 0.68, 0.19]], [[0.11, 0.11, 0.69]]]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["multiclass", "absent_classes", "single_pixel"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kornia_softmax_foreground_reference(dtype, case, weighted):
    # Berman's reference with classes="all", per_image=True (kornia's comment).
    probabilities = torch.tensor(FOREGROUND_PROBABILITIES, dtype=dtype)
    labels = torch.tensor([[[0, 1, 2]]])
    expected_per_class = [0.4, 0.32, 0.31]
    if case == "absent_classes":
        labels = torch.zeros_like(labels)
        expected_per_class = [0.69, 0.68, 0.69]
    elif case == "single_pixel":
        probabilities = probabilities[..., :1]
        labels = labels[..., :1]
        expected_per_class = [0.4, 0.29, 0.11]
    weight = torch.tensor([1.0, 2.0, 3.0], dtype=dtype) if weighted else None
    per_class = torch.tensor(expected_per_class, dtype=dtype)
    logits = dev(probabilities.log())
    w = None if weight is None else dev(weight)
    got_fn = k_softmax(logits, dev(labels), w)
    got_module = L.LovaszLoss("multiclass", True, classes="all", class_weights=w)(logits, dev(labels))
    if weight is None:
        kornia_close(got_fn, per_class.mean())
        kornia_close(got_module, per_class.mean())
    else:
        # kornia expects (w * L).mean(); ours is the weighted mean (README, Migrating, "From kornia": row
        # "class weights"); the table's recipe `* w.sum() / C` gives kornia's value.
        kornia_close(got_fn, (weight * per_class).sum() / weight.sum())
        kornia_close(got_module, (weight * per_class).sum() / weight.sum())
        kornia_close(got_fn * weight.sum().item() / 3, (weight * per_class).mean())


@pytest.mark.parametrize("order", [(2, 0, 1), (1, 2, 0), (0, 2, 1)])
@pytest.mark.parametrize("absent_classes", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_kornia_softmax_class_permutation(order, absent_classes, weighted):
    dtype = torch.float32
    logits = dev(
        torch.tensor([[[[1.2, -0.3, 0.7]], [[0.1, 1.4, -0.2]], [[-0.8, 0.2, 1.6]]]], dtype=dtype)
    ).requires_grad_()
    labels = dev(torch.tensor([[[0, 1, 2]]]))
    if absent_classes:
        labels = torch.zeros_like(labels)
    permutation = dev(torch.tensor(order))
    inverse = permutation.argsort()
    weight = dev(torch.tensor([1.0, 2.0, 3.0], dtype=dtype)) if weighted else None
    original = k_softmax(logits, labels, weight)
    permuted = k_softmax(logits[:, permutation], inverse[labels], weight[permutation] if weight is not None else None)
    kornia_close(permuted, original)
    kornia_close(torch.autograd.grad(permuted, logits)[0], torch.autograd.grad(original, logits)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_softmax_foreground_gradient_reference(dtype):
    # The reference call of test_foreground_reference, differentiated through the softmax.
    probabilities = torch.tensor(FOREGROUND_PROBABILITIES, dtype=dtype)
    logits = dev(probabilities.log()).requires_grad_()
    labels = dev(torch.tensor([[[0, 1, 2]]]))
    expected = torch.tensor(
        [[[[-0.08, 0.0476, 0.0276]], [[0.058, -0.0725333333, 0.0437]], [[0.022, 0.0249333333, -0.0713]]]], dtype=dtype
    )
    loss = k_softmax(logits, labels)
    kornia_close(torch.autograd.grad(loss, logits)[0], expected)


def test_kornia_softmax_dynamo_foreground():
    dtype = torch.float32
    logits = dev(torch.tensor(FOREGROUND_PROBABILITIES, dtype=dtype).log()).requires_grad_()
    labels = dev(torch.tensor([[[0, 1, 2]]]))
    loss = k_softmax(logits, labels)
    optimized = compiled(k_softmax)(logits, labels)
    kornia_close(optimized, torch.tensor(1.03 / 3, dtype=dtype))
    kornia_close(torch.autograd.grad(optimized, logits)[0], torch.autograd.grad(loss, logits)[0])


def test_kornia_softmax_gradcheck():
    num_classes = 4
    g = torch.Generator().manual_seed(0)
    logits = dev(torch.rand(2, num_classes, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    labels = dev(torch.randint(0, num_classes, (2, 3, 2), generator=g))
    assert torch.autograd.gradcheck(lambda x: k_softmax(x, labels), (logits,), fast_mode=True)


def test_kornia_softmax_dynamo():
    # Skipped in kornia ("Not matching results"); here the compiled loss equals the eager one.
    num_classes = 6
    g = torch.Generator().manual_seed(0)
    logits = dev(torch.rand(2, num_classes, 1, 2, generator=g))
    labels = dev(torch.randint(0, num_classes, (2, 1, 2), generator=g))
    kornia_close(compiled(k_softmax)(logits, labels), k_softmax(logits, labels))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_softmax_module(dtype):
    num_classes = 5
    g = torch.Generator().manual_seed(0)
    logits = dev(torch.rand(2, num_classes, 1, 2, generator=g, dtype=dtype))
    labels = dev((torch.rand(2, 1, 2, generator=g) * num_classes).long())
    kornia_close(k_softmax(logits, labels), L.LovaszLoss("multiclass", True, classes="all")(logits, labels))


# ============================================================================ kornia: Lovász hinge


def _lovasz_grad_reference(foreground_sorted):
    """Berman's lovasz_grad in float64, with the counts kept as Python integers (kornia's helper)."""
    total = int(foreground_sorted.sum().item())
    seen_foreground = seen_background = 0
    jaccard = []
    for value in foreground_sorted.tolist():
        if value:
            seen_foreground += 1
        else:
            seen_background += 1
        jaccard.append(1.0 - (total - seen_foreground) / (total + seen_background))
    out = torch.tensor(jaccard, dtype=torch.float64)
    out[1:] = out[1:] - out[:-1]
    return out


def _lovasz_hinge_reference(logits, labels):
    """kornia's reduction of Berman's per-image Lovász hinge, in float64 one sample at a time (kornia's helper)."""
    logits = logits.double()
    loss = torch.zeros((), dtype=torch.float64)
    for b in range(logits.shape[0]):
        target = labels[b].double().flatten()
        errors = (1.0 - logits[b].flatten() * (2.0 * target - 1.0)).relu()
        errors_sorted, permutation = errors.sort(descending=True)
        loss = loss + errors_sorted.dot(_lovasz_grad_reference(target[permutation])) / logits.shape[0]
    return loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_hinge_smoke(dtype):
    logits = dev(torch.rand(2, 1, 1, 1, dtype=dtype))
    labels = dev((torch.rand(2, 1, 1) * 1).long())
    loss = L.LovaszLoss("binary", True)(logits, labels)
    assert loss is not None and loss.shape == () and torch.isfinite(loss)


def test_kornia_hinge_exception():
    criterion = L.LovaszLoss("binary", True)
    # kornia: "pred and target shapes must be the same. Got:"
    with pytest.raises(ValueError, match="shape"):
        criterion(dev(torch.rand(1, 1, 1, 2)), dev(torch.rand(1, 1, 1)))
    with pytest.raises(ValueError, match="shape"):
        L.lovasz_hinge(dev(torch.rand(1, 1, 1, 2)), dev(torch.rand(1, 1, 1)))
    # kornia: "pred and target must be in the same device. Got:"
    with pytest.raises(ValueError, match="device"):
        criterion(dev(torch.rand(1, 1, 1, 1)), torch.rand(1, 1, 1, device="meta"))
    with pytest.raises(ValueError, match="device"):
        L.lovasz_hinge(dev(torch.rand(1, 1, 1, 1)), torch.rand(1, 1, 1, device="meta"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_hinge_multi_class(dtype):
    num_classes = 5
    logits = dev(torch.rand(2, num_classes, 3, 2, dtype=dtype))
    labels = dev((torch.rand(2, 3, 2) * num_classes).long())
    with pytest.raises(ValueError):  # kornia: any Exception
        L.LovaszLoss("binary", True)(logits, labels)
    with pytest.raises(ValueError):
        L.lovasz_hinge(logits, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_hinge_perfect_prediction(dtype):
    prediction = dev(torch.ones(2, 1, 1, 2, dtype=dtype))
    labels = dev(torch.ones(2, 1, 2, dtype=torch.int64))
    loss = L.LovaszLoss("binary", True)(prediction, labels)
    kornia_close(loss, torch.zeros_like(loss), rtol=1e-3, atol=1e-3)
    kornia_close(L.lovasz_hinge(prediction, labels), 0.0, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_kornia_hinge_output_dtype_follows_the_prediction(dtype):
    logits = dev(torch.randn(2, 1, 4, 5).to(dtype))
    labels = dev(torch.randint(0, 2, (2, 4, 5)))
    assert L.lovasz_hinge(logits, labels).dtype == dtype
    assert L.LovaszLoss("binary", True)(logits, labels).dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_hinge_default_dtype_does_not_change_the_loss(dtype):
    logits = dev(torch.randn(2, 1, 4, 5, dtype=dtype))
    labels = dev(torch.randint(0, 2, (2, 4, 5)))
    expected = L.lovasz_hinge(logits, labels)
    original = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32 if original == torch.float64 else torch.float64)
        loss = L.lovasz_hinge(logits, labels)
    finally:
        torch.set_default_dtype(original)
    assert loss.dtype == dtype
    kornia_close(loss, expected)


def test_kornia_hinge_float64_matches_a_float64_reference():
    if torch_device().type == "mps":
        pytest.skip("MPS does not support float64")
    g = torch.Generator().manual_seed(0)
    logits_host = torch.randn(2, 1, 16, 24, generator=g, dtype=torch.float64)
    labels_host = torch.randint(0, 2, (2, 16, 24), generator=g)
    logits = dev(logits_host).requires_grad_()
    reference_logits = logits_host.clone().requires_grad_()
    expected = _lovasz_hinge_reference(reference_logits, labels_host)
    expected_grad = torch.autograd.grad(expected, reference_logits)[0]
    loss = L.lovasz_hinge(logits, dev(labels_host))
    # the Jaccard weights are exact in float64: only the summation order differs from the reference
    kornia_close(loss, expected, rtol=1e-12, atol=1e-12)
    kornia_close(torch.autograd.grad(loss, logits)[0], expected_grad, rtol=1e-12, atol=1e-15)


def test_kornia_hinge_gradcheck():
    # kornia also makes the float labels require grad (its hinge is differentiable in them); labels are
    # class indices here, so only the logits are checked.
    g = torch.Generator().manual_seed(0)
    logits = dev(torch.rand(2, 1, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    labels = dev(torch.randint(0, 1, (2, 3, 2), generator=g, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x: L.lovasz_hinge(x, labels), (logits,), fast_mode=True)


def test_kornia_hinge_dynamo():
    g = torch.Generator().manual_seed(0)
    logits = dev(torch.rand(2, 1, 1, 2, generator=g))
    labels = dev((torch.rand(2, 1, 2, generator=g) * 1).long())
    kornia_close(compiled(L.lovasz_hinge)(logits, labels), L.lovasz_hinge(logits, labels))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kornia_hinge_module(dtype):
    g = torch.Generator().manual_seed(0)
    logits = dev(torch.rand(2, 1, 1, 2, generator=g, dtype=dtype))
    labels = dev((torch.rand(2, 1, 2, generator=g) * 1).long())
    kornia_close(L.lovasz_hinge(logits, labels), L.LovaszLoss("binary", True)(logits, labels))


# ============================================================================ pytorch_optimizer


@pytest.mark.parametrize(("per_image", "expected_loss"), [(True, 1.74925303), (False, 1.08580458)])
def test_pytorch_optimizer_lovasz_hinge_loss(per_image, expected_loss):
    # their LovaszHingeLoss(per_image)(y_pred, y_true); per_image=False is one hinge over the whole batch
    y_pred = torch.tensor(
        [
            [
                [
                    [1.9269, 1.4873, 0.9007, -2.1055],
                    [0.6784, -1.2345, -0.0431, -1.6047],
                    [-0.7521, 1.6487, -0.3925, -1.4036],
                    [-0.7279, -0.5594, -0.7688, 0.7624],
                ]
            ],
            [
                [
                    [1.6423, -0.1596, -0.4974, 0.4396],
                    [-0.7581, 1.0783, 0.8008, 1.6806],
                    [1.2791, 1.2964, 0.6105, 1.3347],
                    [-0.2316, 0.0418, -0.2516, 0.8599],
                ]
            ],
        ]
    )
    y_true = torch.zeros_like(y_pred)
    y_true[1] = 1.0
    with torch.no_grad():
        loss = L.lovasz_hinge(dev(y_pred), dev(y_true), per_image)
        module_loss = L.LovaszLoss("binary", per_image)(dev(y_pred), dev(y_true))
    assert float(loss) == pytest.approx(expected_loss, abs=1e-6)
    assert float(module_loss) == pytest.approx(expected_loss, abs=1e-6)


@pytest.mark.parametrize(("per_image", "expected_loss"), [(True, 1.625), (False, 7.0 / 6.0)])
def test_pytorch_optimizer_lovasz_hinge_loss_2x2(per_image, expected_loss):
    y_pred = torch.tensor([[2.0, -1.0], [0.5, 1.5]]).view(2, 1, 1, 2)
    y_true = torch.zeros_like(y_pred)
    y_true[1] = 1.0
    with torch.no_grad():
        loss = L.lovasz_hinge(dev(y_pred), dev(y_true), per_image)
    assert float(loss) == pytest.approx(expected_loss, abs=1e-6)


# ============================================================================ mmsegmentation
# mmseg's LovaszLoss(loss_type='multi_class' | 'binary', ...) takes logits in both modes, so it is
# LovaszLoss('multiclass' | 'binary', per_image, ignore_index) here; its forward's ignore_index is 255
# unless given. mmseg's test only runs the losses; the values below are added, against the oracle.
# Not ported: "test lovasz loss has name `loss_lovasz`" (loss_name): we have no registry and no
# loss_name, on purpose (README, Migrating, "From mmsegmentation": row "registry").


def _softmax_np(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_mmseg_unknown_loss_type():
    # mmseg: loss_type='Binary' raises AssertionError; here an unknown mode raises a ValueError naming it
    # (README, Migrating, "From segmentation-models-pytorch": row "unknown mode").
    with pytest.raises(ValueError, match="mode"):
        L.LovaszLoss("Binary")


def test_mmseg_batch_mode_needs_no_reduction_none():
    # mmseg: per_image=False with reduction='mean' (its default) raises AssertionError. Opposite here, on
    # purpose (README, Migrating, "From mmsegmentation": row "constructor"): a batch-mode loss is one
    # number, and every reduction gives that same 0-d value.
    g = torch.Generator().manual_seed(1)
    logits = dev(torch.rand(1, 3, 4, 4, generator=g))
    labels = dev((torch.rand(1, 4, 4, generator=g) * 2).long())
    losses = [L.LovaszLoss("multiclass", reduction=r)(logits, labels) for r in ("mean", "sum", "none")]
    assert all(loss.shape == () for loss in losses)
    assert losses[0].item() == losses[1].item() == losses[2].item()


def test_mmseg_multiclass_batch():
    # mmseg: dict(type='LovaszLoss', reduction='none', loss_weight=1.0); lovasz_loss(logits, labels)
    g = torch.Generator().manual_seed(2)
    logits = torch.rand(1, 3, 4, 4, generator=g)
    labels = (torch.rand(1, 4, 4, generator=g) * 2).long()
    loss = L.LovaszLoss("multiclass", ignore_index=255)(dev(logits), dev(labels))
    expected = R.lovasz_softmax(_softmax_np(host(logits)), host(labels), ignore=255)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_mmseg_multiclass_per_image_class_weight():
    # mmseg: per_image=True, reduction='mean', class_weight=[1.0, 2.0, 3.0]; lovasz_loss(..., ignore_index=None)
    g = torch.Generator().manual_seed(3)
    logits = torch.rand(1, 3, 4, 4, generator=g)
    labels = (torch.rand(1, 4, 4, generator=g) * 2).long()
    weight = [1.0, 2.0, 3.0]
    loss = L.LovaszLoss("multiclass", True, None, class_weights=weight)(dev(logits), dev(labels))
    probas = _softmax_np(host(logits))
    present = sorted(set(host(labels).ravel().tolist()))
    assert present == [0, 1]
    per_class = {c: R.lovasz_softmax(probas, host(labels), classes=[c], per_image=True) for c in present}
    # ours is the weighted mean over the present classes; mmseg's is sum(w_c L_c) / n (README, Migrating,
    # "From mmsegmentation": row "class_weight"); the table's recipe for 'present' gives mmseg's value
    ours = sum(weight[c] * per_class[c] for c in present) / sum(weight[c] for c in present)
    mmseg = sum(weight[c] * per_class[c] for c in present) / len(present)
    assert loss.item() == pytest.approx(ours, abs=1e-6)
    recipe = loss * torch.tensor(weight)[torch.as_tensor(host(labels)).unique()].mean().item()
    assert recipe.item() == pytest.approx(mmseg, abs=1e-6)


def test_mmseg_class_weight_from_file_is_refused():
    # mmseg reads class_weight='<file>.pkl' / '<file>.npy' as a file. Not here (README, Migrating, "From
    # mmsegmentation": row "class_weight"): a string is refused; pass the weights themselves.
    with pytest.raises(TypeError):
        L.LovaszLoss("multiclass", True, class_weights="/tmp/weights.pkl")


def test_mmseg_class_weight_from_file_error_names_the_argument():
    with pytest.raises(TypeError, match="class_weights"):
        L.LovaszLoss("multiclass", True, class_weights="/tmp/weights.npy")


@pytest.mark.parametrize("per_image", [False, True])
def test_mmseg_binary(per_image):
    # mmseg: loss_type='binary', per_image=False with reduction='none' (called without ignore_index, so
    # 255), and per_image=True with reduction='mean' and ignore_index=None. Its labels (rand(2, 4, 4)).long()
    # are all 0.
    g = torch.Generator().manual_seed(4)
    logits = torch.rand(2, 4, 4, generator=g)
    labels = torch.rand(2, 4, 4, generator=g).long()
    ignore = None if per_image else 255
    reduction = "mean" if per_image else "none"
    loss = L.LovaszLoss("binary", per_image, ignore, reduction=reduction)(dev(logits), dev(labels))
    assert loss.shape == ()
    expected = R.lovasz_hinge(host(logits), host(labels), per_image=per_image, ignore=ignore)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # no positive pixel: each set's loss is its largest hinge error, 1 + max logit
    top = logits.flatten(1).max(1).values
    assert loss.item() == pytest.approx((1 + top).mean().item() if per_image else 1 + top.max().item(), abs=1e-6)


# ============================================================================ catalyst


def test_catalyst_criterion_init():
    # catalyst constructs every loss class of catalyst.contrib.losses with its defaults; its Lovász ones are
    # LovaszLossBinary(), LovaszLossMultiClass(), LovaszLossMultiLabel() (per_image=False, ignore=None).
    for mode in ("binary", "multiclass", "multilabel"):
        instance = L.LovaszLoss(mode)
        assert instance is not None and instance.per_image is False and instance.ignore_index is None
    assert L.LovaszLoss() is not None

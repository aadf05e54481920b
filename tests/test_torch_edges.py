"""Where the original fails, lovasz.torch works; bad input gets a clear error.

Inputs are drawn on the CPU and moved to the test device (LOVASZ_TEST_DEVICE).
"""

import numpy as np
import pytest

from conftest import dev, host, require, torch_device
from lovasz import reference as R

torch = require("torch")
L = require("lovasz.torch")


def rand_case(batch=2, num_classes=4, spatial=(5, 6), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    probas = torch.randn(batch, num_classes, *spatial, generator=g).softmax(1).to(dtype)
    labels = torch.randint(0, num_classes, (batch, *spatial), generator=g)
    return dev(probas), dev(labels)


def assert_zero_with_zero_grad(fn, x, *args, **kwargs):
    x = x.clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    assert loss.shape == () and loss.item() == 0 and not torch.isnan(loss)
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("per_image", [False, True])
def test_all_ignored_gives_zero_with_zero_grad(per_image):
    probas, labels = rand_case()
    labels[:] = 255
    assert_zero_with_zero_grad(L.lovasz_softmax, probas, labels, per_image=per_image, ignore=255)
    assert_zero_with_zero_grad(L.lovasz_hinge, probas[:, 0], labels, per_image=per_image, ignore=255)
    assert_zero_with_zero_grad(
        L.lovasz_multilabel, probas, dev(torch.full(probas.shape, 255)), per_image=per_image, ignore=255
    )


def test_all_ignored_image_counts_as_zero_in_the_mean():
    probas, labels = rand_case(batch=3)
    labels[1] = 255
    expected = R.lovasz_softmax(host(probas.double()), host(labels), per_image=True, ignore=255)
    got = L.lovasz_softmax(probas, labels, per_image=True, ignore=255)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    per_image = L.lovasz_softmax(probas, labels, per_image=True, ignore=255, reduction="none")
    assert per_image.shape == (3,) and per_image[1] == 0


def test_one_valid_pixel():
    probas, labels = rand_case(batch=1)
    labels[:] = 255
    labels[0, 2, 3] = 1
    p = probas.clone().requires_grad_()
    loss = L.lovasz_softmax(p, labels, ignore=255)
    # one pixel of class 1: error 1 - p, its only step J(1) = 1
    assert loss.item() == pytest.approx(1 - probas[0, 1, 2, 3].item(), abs=1e-6)
    loss.backward()
    assert p.grad[0, 1, 2, 3] == -1 and torch.count_nonzero(p.grad) == 1
    x = dev(torch.randn(1, 4, 4)).requires_grad_()
    hinge = L.lovasz_hinge(x, torch.where(labels[:, :4, :4] == 1, 1, 255), ignore=255)
    assert hinge.item() == pytest.approx(max(0.0, 1 - x[0, 2, 3].item()), abs=1e-6)


def test_float64_in_float64_out():
    probas, labels = rand_case(dtype=torch.float64)
    p = probas.clone().requires_grad_()
    loss = L.lovasz_softmax(p, labels)
    assert loss.dtype == torch.float64
    loss.backward()
    assert p.grad.dtype == torch.float64
    assert loss.item() == pytest.approx(R.lovasz_softmax(host(probas), host(labels)), rel=1e-12)


@pytest.mark.parametrize("classes", ["present", "all", [1]])
def test_sigmoid_input(classes):
    g = torch.Generator().manual_seed(5)
    p = dev(torch.rand(3, 7, 7, generator=g))
    labels = dev(torch.randint(0, 2, (3, 7, 7), generator=g))
    two = torch.stack([1 - p, p], 1)
    assert L.lovasz_softmax(p, labels, classes).item() == pytest.approx(
        L.lovasz_softmax(two, labels, classes).item(), abs=1e-6
    )
    # [B, 1, *spatial] is the same single foreground channel
    assert L.lovasz_softmax(p[:, None], labels, classes).item() == pytest.approx(
        L.lovasz_softmax(p, labels, classes).item(), abs=1e-7
    )


def test_non_contiguous_and_channels_last():
    probas, labels = rand_case(batch=2, num_classes=3, spatial=(8, 8))
    expected = L.lovasz_softmax(probas, labels, per_image=True)
    cl = probas.contiguous(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    assert L.lovasz_softmax(cl, labels, per_image=True).item() == pytest.approx(expected.item(), abs=1e-7)
    strided = dev(torch.randn(2, 3, 8, 16)).softmax(1)[..., ::2]
    lab = labels.transpose(1, 2).contiguous().transpose(1, 2)
    assert L.lovasz_softmax(strided, lab).item() == pytest.approx(
        L.lovasz_softmax(strided.contiguous(), lab.contiguous()).item(), abs=1e-7
    )
    g = cl.clone().requires_grad_()
    L.lovasz_softmax(g, labels).backward()
    assert g.grad.shape == cl.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    """Half inputs are computed in float32 and the result rounded once to the input dtype.

    So the result is the float32 loss of the same inputs, rounded: within 1e-3 of it,
    plus half a unit in the last place of the dtype (bfloat16 has 8 bits: 0.004 near 1).
    """
    probas, labels = rand_case(batch=2, num_classes=5, spatial=(16, 16))
    logits = dev(torch.randn(2, 16, 16)) * 2
    binary = labels.clamp(max=1)
    for fn, x, lab in [(L.lovasz_softmax, probas, labels), (L.lovasz_hinge, logits, binary)]:
        low = x.to(dtype).requires_grad_()
        loss = fn(low, lab, per_image=True)
        assert loss.dtype == dtype
        loss.backward()
        assert low.grad.dtype == dtype and torch.isfinite(low.grad).all()
        same_inputs = fn(low.detach().float(), lab, per_image=True)
        assert loss == same_inputs.to(dtype)
        half_ulp = torch.finfo(dtype).eps * abs(same_inputs.item())
        assert abs(loss.float().item() - same_inputs.item()) <= 1e-3 + half_ulp
        full = fn(x, lab, per_image=True)
        assert abs(loss.float().item() - full.item()) <= 1e-3 + half_ulp + (1e-2 if dtype == torch.bfloat16 else 0)


def test_autocast():
    probas, labels = rand_case()
    with torch.autocast(torch_device().type, dtype=torch.bfloat16):
        loss = L.lovasz_softmax(probas, labels, from_logits=True)
    assert torch.isfinite(loss)


def test_another_default_device_or_dtype_changes_nothing():
    """What the loss makes itself goes where its inputs are, in their precision: torch.set_default_device
    (here meta, where a tensor has no data) and set_default_dtype leave the losses and gradients as they are."""
    probas, labels = rand_case(num_classes=4, spatial=(6, 5))
    labels[0, :2] = 255
    point_labels, scene = labels.reshape(-1), dev(torch.arange(60) // 30)
    calls = [
        lambda p: L.lovasz_softmax(p, labels, per_image=True, ignore=255, from_logits=True, weights=[1.0, 2, 3, 4]),
        lambda p: L.lovasz_hinge(p[:, 0], labels.clamp(max=1)),
        lambda p: L.lovasz_multilabel(p, (p > 0.25).detach(), classes=[0, 2], weights=[1.0, 2, 3, 4]),
        lambda p: L.lovasz_softmax(p.movedim(1, -1).reshape(-1, 4), point_labels, ignore=255, offsets=[30, 60]),
        lambda p: L.lovasz_softmax(
            p.movedim(1, -1).reshape(-1, 4), point_labels, per_image=True, ignore=255, batch=scene
        ),
    ]

    def run(call):
        x = probas.clone().requires_grad_()
        loss = call(x)
        loss.backward()
        return loss.detach(), x.grad

    expected = [run(call) for call in calls]
    for default in [torch.device("meta"), torch.float64]:
        try:
            if isinstance(default, torch.device):
                torch.set_default_device(default)
            else:
                torch.set_default_dtype(default)
            got = [run(call) for call in calls]
        finally:
            torch.set_default_device(None)
            torch.set_default_dtype(torch.float32)
        for (value, grad), (want, want_grad) in zip(got, expected):
            torch.testing.assert_close(value, want)
            torch.testing.assert_close(grad, want_grad)


def test_anomaly_detection_finds_nothing_to_report():
    """Under torch.autograd.detect_anomaly (which raises at a backward that makes a NaN) the losses with
    ignored pixels, of points and of a mostly ignored grid give what they give without it."""
    logits, labels = rand_case(num_classes=4, spatial=(6, 5))
    logits, labels = logits.log(), labels.clone()
    labels[0, :2] = 255
    grid_labels = torch.full_like(labels, 255)
    grid_labels[1, 2, 3] = 1
    calls = [
        lambda p: L.lovasz_softmax(p, labels, per_image=True, ignore=255, from_logits=True),
        lambda p: L.lovasz_softmax(p, grid_labels, ignore=255, from_logits=True),
        lambda p: L.lovasz_hinge(p[:, 0], labels.clamp(max=1), ignore=255, margin="elu"),
        lambda p: L.lovasz_softmax(
            p.movedim(1, -1).reshape(-1, 4), labels.reshape(-1), per_image=True, ignore=255, offsets=[30, 60]
        ),
    ]
    for call in calls:
        x, checked = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        loss = call(x)
        loss.backward()
        with torch.autograd.detect_anomaly():
            checked_loss = call(checked)
            checked_loss.backward()
        torch.testing.assert_close(checked_loss, loss)
        torch.testing.assert_close(checked.grad, x.grad)


def test_perfect_prediction_and_from_logits():
    labels = dev(torch.randint(0, 3, (2, 6, 6)))
    one_hot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert L.lovasz_softmax(one_hot, labels).item() == 0
    assert L.lovasz_softmax(one_hot * 50, labels, from_logits=True).item() == pytest.approx(0, abs=1e-6)
    logits = dev(torch.randn(2, 3, 6, 6))
    assert L.lovasz_softmax(logits, labels, from_logits=True).item() == pytest.approx(
        L.lovasz_softmax(logits.softmax(1), labels).item(), abs=1e-7
    )
    assert L.lovasz_hinge(one_hot[:, 1] * 4 - 2, (labels == 1).long()).item() == 0


def test_weights_and_reductions():
    probas, labels = rand_case(batch=3)
    per_class = torch.stack([L.lovasz_softmax(probas, labels, classes=[c]) for c in range(4)])
    w = dev([1.0, 2.0, 0.5, 3.0])
    present = dev([float((labels == c).any()) for c in range(4)])
    expected = (per_class * w * present).sum() / (w * present).sum()
    assert L.lovasz_softmax(probas, labels, weights=w).item() == pytest.approx(expected.item(), abs=1e-6)
    assert L.lovasz_softmax(probas, labels, weights=[1.0, 2.0, 0.5, 3.0]).item() == pytest.approx(
        expected.item(), abs=1e-6
    )
    none = L.lovasz_softmax(probas, labels, per_image=True, reduction="none")
    assert none.shape == (3,)
    assert L.lovasz_softmax(probas, labels, per_image=True, reduction="sum").item() == pytest.approx(
        none.sum().item(), abs=1e-6
    )
    assert L.lovasz_softmax(probas, labels, reduction="none").shape == ()


def test_labels_at_ignored_pixels_may_be_anything():
    probas, labels = rand_case()
    masked = labels.clone()
    masked[:, :2] = 255
    kept = L.lovasz_softmax(probas[:, :, 2:], labels[:, 2:])
    assert L.lovasz_softmax(probas, masked, ignore=255).item() == pytest.approx(kept.item(), abs=1e-7)
    masked[:, :2] = -1
    assert L.lovasz_softmax(probas, masked, ignore=-1).item() == pytest.approx(kept.item(), abs=1e-7)


def test_zero_pixels():
    probas = dev(torch.rand(2, 3, 0, 4)).requires_grad_()
    loss = L.lovasz_softmax(probas, dev(torch.zeros(2, 0, 4, dtype=torch.long)))
    assert loss.item() == 0
    loss.backward()


def test_multilabel_is_mean_of_channel_hinges():
    g = torch.Generator().manual_seed(7)
    logits = dev(torch.randn(2, 3, 6, 6, generator=g))
    targets = dev(torch.randint(0, 2, (2, 3, 6, 6), generator=g))
    per_channel = [L.lovasz_hinge(logits[:, c], targets[:, c], reduction="none") for c in range(3)]
    expected = torch.stack(per_channel, 1).mean(1).mean()
    assert L.lovasz_multilabel(logits, targets).item() == pytest.approx(expected.item(), abs=1e-6)


# ----------------------------------------------------------------------------- the module


def test_module_modes_match_functions():
    g = torch.Generator().manual_seed(8)
    logits = dev(torch.randn(2, 4, 6, 6, generator=g))
    labels = dev(torch.randint(0, 4, (2, 6, 6), generator=g))
    assert L.LovaszLoss("multiclass")(logits, labels).item() == pytest.approx(
        L.lovasz_softmax(logits, labels, from_logits=True).item()
    )
    assert L.LovaszLoss("multiclass", from_logits=False, per_image=True)(
        logits.softmax(1), labels
    ).item() == pytest.approx(L.lovasz_softmax(logits.softmax(1), labels, per_image=True).item())
    binary = (labels == 1).long()
    hinge = L.lovasz_hinge(logits[:, 0], binary, per_image=False)  # smp's default in every mode
    assert L.LovaszLoss("binary")(logits[:, :1], binary).item() == pytest.approx(hinge.item())
    assert L.LovaszLoss("binary")(logits[:, :1], binary[:, None].float()).item() == pytest.approx(hinge.item())
    assert L.LovaszLoss("binary")(logits[:, 0], binary).item() == pytest.approx(hinge.item())
    probs = logits[:, 0].sigmoid()
    assert L.LovaszLoss("binary", from_logits=False)(probs, binary).item() == pytest.approx(
        L.lovasz_softmax(probs, binary, classes=[1]).item(), abs=1e-6
    )
    multi = dev(torch.randint(0, 2, (2, 4, 6, 6), generator=g))
    assert L.LovaszLoss("multilabel", ignore_index=255)(logits, multi).item() == pytest.approx(
        L.lovasz_multilabel(logits, multi, ignore=255, per_image=False).item()
    )
    weighted = L.LovaszLoss("multiclass", class_weights=[1, 2, 3, 4], reduction="none", per_image=True)
    weighted.to(torch_device())  # its class weights are a buffer: they move with the module
    assert weighted(logits, labels).shape == (2,)
    assert "multiclass" in repr(weighted)


# ----------------------------------------------------------------------------- errors


def d(*tensors):
    """The tensors on the test device."""
    return [dev(t) for t in tensors]


# Out-of-range label values stay on the CPU: only there is the check eager (a ValueError); on an
# accelerator it is queued with torch._assert_async, a device-side assert that would poison the device
# for the rest of the run. Every other check is on shapes, dtypes and arguments: it runs on the test device.
@pytest.mark.parametrize(
    "call,error,words",
    [
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4, 4), torch.zeros(2, 2, 4, 4, dtype=torch.long))),
            ValueError,
            ["labels", "[2, 4, 4]", "[2, 2, 4, 4]"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))),
            ValueError,
            ["labels", "[2, 4, 4]", "[2, 4, 5]"],
        ),
        (
            lambda: L.lovasz_softmax(torch.rand(2, 3, 4, 4), torch.full((2, 4, 4), 3)),  # CPU only
            ValueError,
            ["labels", "[0, 2]", "3"],
        ),
        (
            lambda: L.lovasz_softmax(torch.rand(2, 3, 4, 4), torch.full((2, 4, 4), 7), ignore=255),  # CPU only
            ValueError,
            ["labels", "non-ignored", "7"],
        ),
        (
            lambda: L.lovasz_softmax(torch.rand(2, 3, 4, 4), torch.full((2, 4, 4), 1.5)),  # CPU only
            ValueError,
            ["labels", "whole number", "1.5"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.complex64))),
            TypeError,
            ["labels", "class indices", "complex64"],
        ),
        (
            lambda: L.lovasz_softmax(
                *d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), classes=torch.tensor([1.7])
            ),
            TypeError,
            ["classes", "integer", "float32"],
        ),
        (
            lambda: L.lovasz_softmax(
                *d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), classes=torch.tensor([[0, 1]])
            ),
            ValueError,
            ["classes", "1-D", "[1, 2]"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), weights="balanced"),
            TypeError,
            ["weights", "real numbers", "'balanced'"],
        ),
        (
            lambda: L.lovasz_softmax(
                *d(torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long))
            ),
            TypeError,
            ["probas", "floating", "int64"],
        ),
        (
            lambda: L.lovasz_softmax(np.zeros((2, 3)), dev(torch.zeros(2, dtype=torch.long))),
            TypeError,
            ["probas", "Tensor", "ndarray"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), classes="some"),
            ValueError,
            ["classes", "'present'", "'some'"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), classes=[5]),
            ValueError,
            ["classes", "[0, 2]", "5"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), classes=[]),
            ValueError,
            ["classes", "empty"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), reduction="avg"),
            ValueError,
            ["reduction", "'avg'"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), weights=[1, 2]),
            ValueError,
            ["weights", "[3]", "[2]"],
        ),
        (
            lambda: L.lovasz_softmax(*d(torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), ignore="255"),
            TypeError,
            ["ignore", "'255'"],
        ),
        (
            lambda: L.lovasz_hinge(torch.randn(2, 4), torch.full((2, 4), 2)),  # CPU only
            ValueError,
            ["labels", "0 or 1", "2"],
        ),
        (
            lambda: L.lovasz_hinge(*d(torch.randn(2, 3, 4), torch.zeros(2, 4))),
            ValueError,
            ["labels", "[2, 3, 4]", "[2, 4]"],
        ),
        (
            lambda: L.lovasz_multilabel(*d(torch.randn(2, 3, 4), torch.zeros(2, 4))),
            ValueError,
            ["targets", "[2, 3, 4]", "[2, 4]"],
        ),
        (lambda: L.LovaszLoss("binaryy"), ValueError, ["mode", "'binaryy'"]),
        (
            lambda: L.LovaszLoss("binary")(torch.randn(2, 1, 4), torch.full((2, 4), 2)),  # CPU only
            ValueError,
            ["target", "0 or 1", "2"],
        ),
        (
            lambda: L.LovaszLoss("multiclass")(torch.randn(2, 3, 4), torch.full((2, 4), 5)),  # CPU only
            ValueError,
            ["target", "[0, 2]", "5"],
        ),
        (
            lambda: L.LovaszLoss("multiclass")(*d(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long))),
            ValueError,
            ["target", "input [2, 3, 4]", "[2, 5]"],
        ),
        (
            lambda: L.LovaszLoss("multilabel")(*d(torch.randn(2, 3, 4), torch.zeros(2, 4))),
            ValueError,
            ["target", "input [2, 3, 4]", "[2, 4]"],
        ),
        (
            lambda: L.LovaszLoss("multiclass", class_weights=[1.0, 2.0])(
                *d(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
            ),
            ValueError,
            ["class_weights", "[3]", "[2]"],
        ),
        (lambda: L.CrossEntropyLovaszLoss(class_weights="balanced"), TypeError, ["class_weights", "'balanced'"]),
        (
            lambda: L.LovaszLoss("binary")(*d(torch.randn(2, 1, 4), torch.zeros(2, 5))),
            ValueError,
            ["target", "[2, 1, 4]", "[2, 5]"],
        ),
    ],
)
def test_errors_name_argument_expectation_and_value(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ----------------------------------------------------------------------------- the saved gradient, reused


SCALED_CALLS = [
    ("batch", lambda x, y: L.lovasz_softmax(x, y, ignore=255)),
    ("per image", lambda x, y: 0.5 * L.lovasz_softmax(x, y, per_image=True, ignore=255)),
    ("from logits", lambda x, y: 3 * L.lovasz_softmax(x, y, from_logits=True, ignore=255)),
    (
        "scenes",
        lambda x, y: L.lovasz_softmax(
            x.movedim(1, -1).reshape(-1, 4), y.reshape(-1), per_image=True, ignore=255, offsets=[30, 60]
        ),
    ),
]


@pytest.mark.parametrize("name,call", SCALED_CALLS, ids=[name for name, _ in SCALED_CALLS])
def test_the_saved_gradient_is_scaled_in_place_only_where_no_backward_reads_it_again(name, call):
    """A backward that frees the graph scales the gradient saved in the forward where it is (no copy of the
    input's size); every way of reading it twice gets the same gradient: ``retain_graph``, ``create_graph``,
    ``torch.func.vjp``'s function called twice (the last two not from logits: no second derivative)."""
    probas, labels = rand_case(num_classes=4, spatial=(5, 6))
    labels[0, 0, :2] = 255
    x = probas.clone().requires_grad_()
    (freed,) = torch.autograd.grad(call(x, labels), x)
    loss = call(x, labels)
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    second = torch.autograd.grad(loss, x)[0]
    loss = call(x, labels)
    loss.backward(retain_graph=True)
    loss.backward()
    readers = [first, second, x.grad / 2]
    if name != "from logits":
        readers.append(torch.autograd.grad(call(x, labels), x, create_graph=True)[0].detach())
        _, vjp = torch.func.vjp(lambda x: call(x, labels), probas)
        one = torch.ones((), device=probas.device)
        readers += [vjp(one)[0], vjp(one)[0]]
    for got in readers:
        torch.testing.assert_close(got, freed, rtol=1e-6, atol=1e-7)
    # a batch of cotangents (a vmap over the backward): each its own scale of the same gradient
    cotangents = torch.tensor([1.0, -2.0], device=probas.device)
    (batched,) = torch.autograd.grad(call(x, labels), x, cotangents, is_grads_batched=True)
    torch.testing.assert_close(batched, torch.stack([freed, -2 * freed]), rtol=1e-6, atol=1e-7)
    assert not torch.equal(freed, torch.zeros_like(freed))


# ----------------------------------------------------------------------------- gradcheck and compile


@pytest.mark.parametrize("per_image", [False, True])
def test_gradcheck_float64(per_image):
    g = torch.Generator().manual_seed(9)
    logits = dev(torch.randn(2, 3, 4, 3, generator=g, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 3, (2, 4, 3), generator=g)
    labels[0, 0, 0] = 255
    labels = dev(labels)
    assert torch.autograd.gradcheck(
        lambda x: L.lovasz_softmax(x, labels, per_image=per_image, ignore=255, from_logits=True), (logits,)
    )
    scores = dev(torch.randn(2, 4, 3, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: L.lovasz_hinge(x, labels.clamp(max=1), per_image=per_image), (scores,))
    assert torch.autograd.gradcheck(
        lambda x: L.lovasz_multilabel(
            x, (labels[:, None] == dev(torch.arange(3)).view(1, 3, 1, 1)).long(), per_image=per_image, classes="all"
        ),
        (logits,),
    )


COMPILE_OPTIONS = [
    ("softmax", dict(classes="present", per_image=False, ignore=None)),
    ("softmax", dict(classes="all", per_image=True, ignore=255, reduction="none")),
    (
        "softmax",
        dict(classes=[2, 0], per_image=False, ignore=255, from_logits=True, weights=torch.tensor([1.0, 2.0, 3.0])),
    ),
    ("hinge", dict(per_image=True, ignore=255)),
    ("hinge", dict(per_image=False, reduction="sum")),
    ("multilabel", dict(per_image=True, ignore=255, classes="present")),
    # weights as a Python list: the host check read them back from a tensor (an error under fullgraph=True)
    ("softmax", dict(per_image=True, weights=[1.0, 0.0, 2.5])),
    ("multilabel", dict(per_image=False, ignore=255, weights=(1, 2, 3))),
]


@pytest.mark.parametrize("kind,options", COMPILE_OPTIONS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(COMPILE_OPTIONS)])
def test_torch_compile_fullgraph(kind, options):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 5, 5, generator=g)
    labels = torch.randint(0, 3, (2, 5, 5), generator=g)
    if options.get("ignore") == 255:
        labels[0, 0] = 255
    if kind == "softmax":
        fn, target = L.lovasz_softmax, labels
    elif kind == "hinge":
        fn, target, x = L.lovasz_hinge, torch.where(labels == 255, 255, labels.clamp(max=1)), x[:, 0]
    else:
        fn, target = L.lovasz_multilabel, torch.where(torch.rand(x.shape, generator=g) < 0.1, 255, (x > 0.5).long())
    x, target = dev(x), dev(target)  # compiled for the test device
    options = {k: dev(v) if isinstance(v, torch.Tensor) else v for k, v in options.items()}

    def step(inp):
        return fn(inp, target, **options).sum()

    eager_x, compiled_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = step(eager_x)
    expected.backward()
    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(compiled_x)
    got.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(compiled_x.grad, eager_x.grad)


@pytest.mark.parametrize("per_image", [False, True])
def test_torch_compile_dynamic_shapes(per_image):
    """dynamic=True: one graph for new batch sizes, image sizes and point counts, mostly ignored inputs
    (where the eager path gathers the valid pixels) included; values and gradients equal eager ones."""

    def grid(x, y):
        return L.lovasz_softmax(x, y, ignore=255, per_image=per_image, from_logits=True)

    def points(x, y):
        return L.lovasz_softmax(x, y, ignore=-1, per_image=False)

    torch._dynamo.reset()
    compiled = {fn: torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager") for fn in (grid, points)}
    cases = [
        (grid, (2, 4, 8, 9)),
        (grid, (3, 4, 5, 7)),
        (grid, (1, 4, 16, 16)),
        (points, (100, 19)),
        (points, (257, 19)),
    ]
    for fn, shape in cases:
        g = torch.Generator().manual_seed(sum(shape))
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        if fn is grid:
            y = torch.randint(0, 4, (shape[0], *shape[2:]), generator=g)
            y[torch.rand(y.shape, generator=g) < 0.9] = 255
        else:
            x, y = x.softmax(1), torch.randint(-1, 19, shape[:1], generator=g)
        eager_x, compiled_x = dev(x).requires_grad_(), dev(x).requires_grad_()
        expected = fn(eager_x, dev(y))
        expected.backward()
        got = compiled[fn](compiled_x, dev(y))
        got.backward()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(compiled_x.grad, eager_x.grad)


def test_torch_compile_dynamic_shapes_one_hot_targets_and_offsets():
    """The messages of the queued checks formatted a symbolic size with str() (a graph break: an error under
    fullgraph=True): LovaszLoss's one-hot target and offsets= with dynamic=True."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    one_hot = torch.nn.functional.one_hot(y, 3).movedim(-1, 1)
    points, labels, offsets = torch.randn(10, 3, generator=g), torch.randint(0, 3, (10,), generator=g), [4, 10]
    torch._dynamo.reset()
    module = torch.compile(L.LovaszLoss("multiclass"), fullgraph=True, dynamic=True, backend="eager")
    torch.testing.assert_close(module(dev(x), dev(one_hot)), L.LovaszLoss("multiclass")(dev(x), dev(y)))
    scenes = torch.compile(
        lambda p, t, o: L.lovasz_softmax(p, t, offsets=o, per_image=True), fullgraph=True, dynamic=True, backend="eager"
    )
    expected = L.lovasz_softmax(dev(points), dev(labels), offsets=dev(torch.tensor(offsets)), per_image=True)
    torch.testing.assert_close(scenes(dev(points), dev(labels), dev(torch.tensor(offsets))), expected)


def test_torch_jit_script_is_a_clear_error():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.loss = torch.nn.Conv2d(3, 3, 1), L.CrossEntropyLovaszLoss()

        def forward(self, x):
            return self.conv(x)

    for module, name in [(L.LovaszLoss("multiclass", class_weights=[1.0, 2.0]), "LovaszLoss"), (Model(), "Cross")]:
        with pytest.raises(TypeError, match=f"torch.jit.script cannot compile {name}.*torch.jit.trace"):
            torch.jit.script(module)


def test_torch_compile_inductor():
    x = dev(torch.randn(2, 3, 5, 5)).requires_grad_()
    labels = dev(torch.randint(0, 3, (2, 5, 5)))
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: L.lovasz_softmax(t, labels, from_logits=True), fullgraph=True)
    loss = compiled(x)
    loss.backward()
    assert loss.item() == pytest.approx(L.lovasz_softmax(x.detach(), labels, from_logits=True).item(), abs=1e-6)


def test_op_arguments_by_name_match_the_op_schema():
    """_torch_core reads the op's inputs by name (OP_ARGS); the registered schema must list the same names
    in the same order, or setup_context would save the wrong argument."""
    from lovasz import _torch_core as core

    schema = torch.ops.lovasz.lovasz_loss.default._schema
    assert tuple(argument.name for argument in schema.arguments) == core.OP_ARGS


def test_modules_with_class_weights_build_on_the_meta_device():
    """A large model's skeleton is built under ``torch.device("meta")`` (then ``to_empty``): the weights' numbers
    are checked on the CPU, a meta tensor's values (there are none) when the loss is called."""
    with torch.device("meta"):
        numbers = L.LovaszLoss("multiclass", class_weights=[1.0, 2.0, 3.0])
        L.CrossEntropyLovaszLoss("multiclass", class_weights=torch.tensor([1.0, 2.0, 3.0]))
        with pytest.raises(ValueError, match="class_weights must be finite numbers >= 0"):
            L.LovaszLoss("multiclass", class_weights=[1.0, -2.0, 3.0])
    assert numbers.class_weights.is_meta
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match=r"class_weights must hold values; got a tensor on the meta device.*to_empty"):
        numbers(x, y)  # (torch's own: "Cannot copy out of meta tensor; no data!")
    numbers.to_empty(device="cpu")
    with torch.no_grad():
        numbers.class_weights.copy_(torch.tensor([1.0, 2.0, 3.0]))
    expected = L.LovaszLoss("multiclass", class_weights=[1.0, 2.0, 3.0])(x, y)
    torch.testing.assert_close(numbers(x, y), expected)


@pytest.mark.parametrize("kind", ["softmax", "hinge", "offsets", "grid"])
def test_dispatch_modes_see_the_op_and_get_the_eager_values(kind):
    """Eagerly the op's body runs as a Python function (no dispatcher on the way); where something must see
    the op itself (a dispatch mode such as FlopCounterMode or a tracer, a function mode) it is called as
    ``lovasz::lovasz_loss``: the same values and gradients, bit for bit."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen, pixels = [], []

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            if func == torch.ops.lovasz.lovasz_loss.default:
                pixels.append(args[0].shape[-1])
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(3)
    if kind == "grid":  # mostly ignored: gathered first (a PositionalFunction of its own)
        x = torch.randn(2, 5, 64, 64, 4, generator=g).softmax(1)  # over COMPACT_MIN_VALUES
        y = torch.randint(1, 5, (2, 64, 64, 4), generator=g).masked_fill(torch.rand(2, 64, 64, 4, generator=g) > 0.1, 0)
        call = lambda t: L.lovasz_softmax(t, y, ignore=0)  # noqa: E731
    elif kind == "hinge":
        x, y = torch.randn(3, 7, 5, generator=g), torch.randint(0, 2, (3, 7, 5), generator=g)
        call = lambda t: L.lovasz_hinge(t, y)  # noqa: E731
    else:
        x, y = torch.randn(30, 4, generator=g), torch.randint(0, 4, (30,), generator=g)
        offsets = torch.tensor([10, 30]) if kind == "offsets" else None
        call = lambda t: L.lovasz_softmax(t, y, from_logits=True, offsets=offsets)  # noqa: E731

    def loss_and_grad():
        t = x.clone().requires_grad_()
        loss = call(t)
        loss.backward()
        return loss.detach(), t.grad

    eager = loss_and_grad()
    assert not seen
    with Seen():
        in_mode = loss_and_grad()
    assert torch.ops.lovasz.lovasz_loss.default in seen
    if kind == "grid":  # the op had the valid voxels only
        assert pixels[0] < 0.2 * y.numel()
    for a, b in zip(eager, in_mode):
        assert torch.equal(a, b)


FAKE_CALLS = {
    "softmax from logits": lambda x, y: L.lovasz_softmax(x, y, from_logits=True),
    "softmax ignore weights": lambda x, y: L.lovasz_softmax(x.softmax(1), y, ignore=2, weights=[1.0, 2.0, 3.0]),
    "hinge none": lambda x, y: L.lovasz_hinge(x[:, 0], y.clamp(max=1), reduction="none"),
    "multilabel": lambda x, y: L.lovasz_multilabel(x, (y[:, None] == torch.arange(3)[:, None, None]).long()),
    "module with class weights": lambda x, y: L.CrossEntropyLovaszLoss("multiclass", class_weights=[1, 2, 3])(x, y),
    "one-hot targets": lambda x, y: L.LovaszLoss("multiclass")(x, one_hot_of(y)),
    "points offsets": lambda x, y: L.lovasz_softmax(
        x.movedim(1, -1).reshape(-1, 3), y.reshape(-1), offsets=torch.tensor([x[0, 0].numel(), 2 * x[0, 0].numel()])
    ),
    "points batch": lambda x, y: L.lovasz_softmax(
        x.movedim(1, -1).reshape(-1, 3), y.reshape(-1), batch=torch.arange(y.numel()) % 2, num_scenes=2
    ),
    "mostly ignored grid": lambda x, y: L.lovasz_softmax(x, y.masked_fill(y != 1, 0), ignore=0),
}


def one_hot_of(y):
    return torch.nn.functional.one_hot(y, 3).movedim(-1, 1)


@pytest.mark.parametrize("name", list(FAKE_CALLS))
def test_fake_tensor_mode_gives_the_shapes_of_a_real_call(name):
    """Under FakeTensorMode (what tools that count a step's FLOPs or its memory without running it use) the
    tensors have no values: the checks that read them on the host are queued (no DataDependentOutputException),
    the data-dependent gathering left out, and the loss and gradient have the shapes and dtypes of a real call."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    call = FAKE_CALLS[name]
    shape = (2, 3, 64, 64, 16) if name == "mostly ignored grid" else (2, 3, 5, 4)  # (the grid: gathered when real)

    def run():
        x = torch.randn(shape, requires_grad=True)
        loss = call(x, torch.randint(0, 3, (shape[0], *shape[2:])))
        loss.sum().backward()
        return loss, x.grad

    real_loss, real_grad = run()
    with FakeTensorMode(), FlopCounterMode(display=False):
        fake_loss, fake_grad = run()
    assert (fake_loss.shape, fake_loss.dtype, fake_grad.shape) == (real_loss.shape, real_loss.dtype, real_grad.shape)


def test_fake_tensor_mode_needs_num_scenes_with_batch():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), pytest.raises(TypeError, match="make_fx and FakeTensorMode, batch= needs num_scenes="):
        L.lovasz_softmax(torch.randn(10, 3), torch.randint(0, 3, (10,)), batch=torch.zeros(10, dtype=torch.long))


def test_functionalize_gives_the_eager_values_and_a_clear_error_with_another_transform():
    """torch.func.functionalize (make_fx's way to a graph without mutation) has no rule for an autograd.Function:
    the op serves there; with grad or vmap around or inside it neither can (torch would blame a setup_context)."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    calls = [
        lambda z: L.lovasz_softmax(z, y, from_logits=True, ignore=2),
        lambda z: L.lovasz_softmax(z.softmax(1), y, weights=[1.0, 2.0, 3.0]),
        lambda z: L.lovasz_hinge(z[:, 0], y.clamp(max=1)),
        lambda z: L.CrossEntropyLovaszLoss("multiclass")(z, y),
    ]
    for call in calls:
        assert torch.equal(torch.func.functionalize(call)(x), call(x))
    for transformed in (
        torch.func.grad(torch.func.functionalize(calls[0])),
        torch.func.functionalize(torch.func.grad(calls[0])),
        torch.func.functionalize(
            lambda z: torch.func.vmap(lambda a, t: L.lovasz_softmax(a[None], t[None], from_logits=True))(z, y)
        ),
    ):
        with pytest.raises(RuntimeError, match="under torch.func.functionalize the loss has no derivative nor vmap"):
            transformed(x)


@pytest.mark.parametrize("tracing_mode", ["real", "fake", "symbolic"])
def test_make_fx_graphs_give_the_eager_values_on_new_inputs(tracing_mode):
    """make_fx (torch.fx's tracer, under a proxy mode): the label and weight checks are queued in the graph, not
    read on the host (torch's 'trying to get value out of a tracing tensor'), and the graph of the loss and its
    gradient gives the eager values on other inputs."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def step(x, y):
        x = x.detach().requires_grad_()
        loss = L.lovasz_softmax(x, y, from_logits=True, ignore=2, weights=[1.0, 2.0, 3.0])
        return loss, torch.autograd.grad(loss, x)[0]

    g = torch.Generator().manual_seed(5)
    traced = make_fx(step, tracing_mode=tracing_mode)(
        torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    )
    x, y = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    for got, expected in zip(traced(x, y), step(x, y)):
        torch.testing.assert_close(got, expected)

"""MONAI's conventions in lovasz.torch's modules: one-hot ``[B, C, ...]`` targets, ``[B, 1, ...]`` label
maps, and ``include_background=False``, each against the plain call it stands for and the oracle."""

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

torch = require("torch")
L = require("lovasz.torch")
F = torch.nn.functional


def volume(seed=0, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 5, 6, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (2, 5, 6, 3), generator=g)
    labels[labels == 2] = 1  # class 2 absent: 'present' and 'all' differ
    return logits, labels


def one_hot(labels, num_classes):
    return F.one_hot(labels, num_classes).movedim(-1, 1)


@pytest.mark.parametrize("module", ["LovaszLoss", "CrossEntropyLovaszLoss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool])
def test_one_hot_target_and_label_map_equal_class_indices(module, dtype):
    logits, labels = volume()
    loss_fn = getattr(L, module)("multiclass")
    expected = loss_fn(logits, labels)
    torch.testing.assert_close(loss_fn(logits, one_hot(labels, 4).to(dtype)), expected, rtol=0, atol=0)
    torch.testing.assert_close(loss_fn(logits, labels[:, None]), expected, rtol=0, atol=0)
    # points [N, C] with one-hot [N, C] targets
    points = logits.movedim(1, -1).reshape(-1, 4)
    flat = labels.reshape(-1)
    torch.testing.assert_close(loss_fn(points, one_hot(flat, 4).to(dtype)), loss_fn(points, flat), rtol=0, atol=0)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
def test_include_background_false_leaves_channel_0_out(classes, per_image):
    logits, labels = volume(1)
    loss = L.LovaszLoss("multiclass", per_image, classes=classes, include_background=False)(logits, labels)
    probas = logits.softmax(1).numpy()
    if classes == "all":
        expected = R.lovasz_softmax(probas, labels.numpy(), [1, 2, 3], per_image)
    else:  # present classes but 0
        sets = [(probas[b : b + 1], labels[b : b + 1].numpy()) for b in range(2)] if per_image else [(probas, labels)]
        values = []
        for p, y in sets:
            present = [c for c in (1, 2, 3) if (np.asarray(y) == c).any()]
            values.append(R.lovasz_softmax(p, np.asarray(y), present, False) if present else 0.0)
        expected = float(np.mean(values))
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-10)
    # multi-label: channel 0 out of the channel average
    targets = one_hot(labels, 4)
    got = L.LovaszLoss("multilabel", per_image, classes=classes, include_background=False)(logits, targets)
    kept = L.lovasz_multilabel(logits[:, 1:], targets[:, 1:], classes, per_image)
    torch.testing.assert_close(got, kept)


def test_include_background_with_class_weights_and_cross_entropy():
    logits, labels = volume(2)
    weights = [0.5, 2.0, 1.0, 3.0]
    got = L.LovaszLoss("multiclass", class_weights=weights, include_background=False)(logits, labels)
    expected = L.lovasz_softmax(logits, labels, from_logits=True, weights=[0.0, 2.0, 1.0, 3.0])
    torch.testing.assert_close(got, expected)
    # as MONAI's DiceCELoss: the cross-entropy keeps every class
    combined = L.CrossEntropyLovaszLoss(include_background=False)
    ce = F.cross_entropy(logits, labels)
    torch.testing.assert_close(
        combined(logits, labels),
        ce + L.lovasz_softmax(logits, labels, "present", from_logits=True, weights=[0.0, 1, 1, 1]),
    )


def test_monai_conventions_errors_and_compile():
    logits, labels = volume(3)
    bad = one_hot(labels, 4).float()
    bad[0, :, 0, 0, 0] = 0
    with pytest.raises(ValueError, match=r"must be one-hot .*1 pixels are not"):
        L.LovaszLoss()(logits, bad)
    with pytest.raises(ValueError, match="mode='binary' has one"):
        L.LovaszLoss("binary", include_background=False)
    with pytest.raises(TypeError, match="include_background must be True or False"):
        L.LovaszLoss(include_background="no")
    loss_fn = L.LovaszLoss(include_background=False)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits, one_hot(labels, 4).float()), loss_fn(logits, labels))


def test_module_options_are_checked():
    """Flags counted by their truth (``per_image="False"`` as True), class options of one channel and term
    weights that are no finite number >= 0 were taken without a word."""
    for option in ["per_image", "from_logits", "include_background"]:
        for module in (L.LovaszLoss, L.CrossEntropyLovaszLoss):
            if module is L.CrossEntropyLovaszLoss and option == "from_logits":
                continue
            with pytest.raises(TypeError, match=f"^{option} must be True or False; got 'False'"):
                module("multiclass", **{option: "False"})
    for options in [dict(class_weights=[1.0, 2.0]), dict(classes=[0, 1])]:
        for module in (L.LovaszLoss, L.CrossEntropyLovaszLoss):
            with pytest.raises(ValueError, match="mode='binary' has one channel"):
                module("binary", **options)
    for value in [-1.0, float("nan"), float("inf"), "1", True, 10**400]:  # (10**400: no float holds it)
        with pytest.raises(ValueError, match=r"^ce_weight must be a finite non-negative number; got "):
            L.CrossEntropyLovaszLoss(ce_weight=value)
        with pytest.raises(ValueError, match=r"^lovasz_weight must be a finite non-negative number; got "):
            L.CrossEntropyLovaszLoss(lovasz_weight=value)


def test_cross_entropy_term_checks_its_target_and_keeps_float64():
    logits, labels = volume(5)
    combined = L.CrossEntropyLovaszLoss(ignore_index=255)
    # float64 stays float64 (the cross-entropy was taken in float32), gradients included
    assert combined(logits, labels).dtype == torch.float64
    x = logits[:1, :, :2, :2, :1].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: combined.cross_entropy(x, labels[:1, :2, :2, :1]), (x,))
    # out-of-range labels: our ValueError naming the target, not torch's IndexError, with either term alone
    bad = labels.clone()
    bad[0, 0, 0, 0] = 7
    for ce_weight, lovasz_weight in [(1.0, 1.0), (1.0, 0.0)]:
        module = L.CrossEntropyLovaszLoss(ce_weight=ce_weight, lovasz_weight=lovasz_weight, ignore_index=255)
        with pytest.raises(ValueError, match=r"^target must be in \[0, 3\] at every non-ignored pixel; found 7"):
            module(logits, bad)
    bad[0, 0, 0, 0] = 255  # ignored: fine
    assert torch.isfinite(combined(logits, bad))
    # labels [B, *spatial, 1] as LovaszLoss takes them
    torch.testing.assert_close(combined(logits, labels[..., None]), combined(logits, labels))
    # one channel in multiclass mode: the foreground's logit, as for the Lovász term; a binary cross-entropy
    fg = (labels == 1).long()
    one = logits[:, 1:2]
    ce_only = L.CrossEntropyLovaszLoss(lovasz_weight=0.0)
    expected = F.binary_cross_entropy_with_logits(one[:, 0], fg.double())
    torch.testing.assert_close(ce_only(one, fg), expected)


def test_one_channel_without_background_and_a_process_group_that_is_none_raise():
    with pytest.raises(
        ValueError, match=r"include_background=False leaves out channel 0 of several; input \[2, 1, 5, 6, 3\]"
    ):
        L.LovaszLoss("multiclass", include_background=False)(
            torch.randn(2, 1, 5, 6, 3), torch.zeros(2, 5, 6, 3, dtype=torch.long)
        )
    with pytest.raises(TypeError, match=r"^process_group must be a torch.distributed.ProcessGroup .* got 'world'"):
        L.lovasz_softmax(torch.rand(1, 3, 4), torch.zeros(1, 4, dtype=torch.long), process_group="world")


def test_one_channel_cross_entropy_takes_the_class_weights():
    """Multiclass mode with one channel reads it as two classes [1 - p, p]: the Lovász term weighed them by
    class_weights, the cross-entropy did not (0.8104, the unweighted BCE, where the two-channel form gives 0.9034)."""
    logits, labels = volume(7)
    fg = (labels == 1).long()
    one = logits[:, 1:2]
    two = torch.cat([torch.zeros_like(one), one], 1)  # the same model as two channels [0, x]
    ce_only = L.CrossEntropyLovaszLoss(lovasz_weight=0.0, class_weights=[1.0, 5.0])
    expected = F.cross_entropy(two, fg, weight=torch.tensor([1.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(ce_only(one, fg), expected)
    torch.testing.assert_close(ce_only(one, fg), ce_only(two, fg))
    with pytest.raises(ValueError, match=r"^class_weights must have shape \[2\] \(one weight per class\); got \[3\]"):
        L.CrossEntropyLovaszLoss(class_weights=[1.0, 2.0, 3.0]).cross_entropy(one, fg)


def test_the_combined_loss_has_one_ignore_index():
    """Set on the module after it is made (as on nn.CrossEntropyLoss), ignore_index changed the cross-entropy
    only: the Lovász term kept its own copy."""
    logits, labels = volume(8)
    loss_fn = L.CrossEntropyLovaszLoss()
    loss_fn.ignore_index = 0
    assert loss_fn.lovasz.ignore_index == 0
    torch.testing.assert_close(loss_fn(logits, labels), L.CrossEntropyLovaszLoss(ignore_index=0)(logits, labels))
    with pytest.raises(TypeError, match="ignore_index must be an int or None"):
        loss_fn.ignore_index = 0.5


def test_learned_class_weights_survive_double_and_to():
    """A learnable nn.Parameter of class weights was a buffer: .double() made the module a copy, and the
    optimiser's steps never reached the loss (as nn.CrossEntropyLoss(weight=p) does); it is a parameter now."""
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    loss_fn = L.CrossEntropyLovaszLoss(class_weights=p).double().to("cpu")
    assert loss_fn.lovasz.class_weights is p and p.dtype == torch.float64
    assert [name for name, _ in loss_fn.named_parameters()] == ["lovasz.class_weights"]
    logits, labels = volume(9)
    loss_fn(logits, labels).backward()
    with torch.no_grad():
        p -= 0.5 * p.grad
    moved = p.detach().clone()
    torch.testing.assert_close(
        loss_fn(logits, labels), L.CrossEntropyLovaszLoss(class_weights=moved)(logits, labels), rtol=0, atol=0
    )
    assert "lovasz.class_weights" in loss_fn.state_dict()


def test_binary_mode_takes_a_size_1_axis_of_the_target_as_lovasz_hinge_does():
    """[B, H, W, 1] targets for [B, 1, H, W] input, and [B, 1, H, W] targets for [B, H, W] input, were refused."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 1, 4, 5, generator=g), torch.randint(0, 2, (2, 4, 5), generator=g)
    module = L.LovaszLoss("binary", per_image=True)
    expected = L.lovasz_hinge(x, y)
    combined = L.CrossEntropyLovaszLoss("binary", per_image=True)  # (its cross-entropy refused them)
    for xi, yi in [(x, y[..., None]), (x, y[:, None]), (x[:, 0], y[:, None]), (x[:, 0], y[..., None])]:
        torch.testing.assert_close(module(xi, yi), expected)
        torch.testing.assert_close(combined(xi, yi), combined(x, y))
    with pytest.raises(ValueError, match=r"target must have the shape of input \[2, 4, 5\].*got \[2, 1, 3, 5\]"):
        module(x[:, 0], y[:, None, :3])
    with pytest.raises(ValueError, match=r"symmetric=True are variants of the hinge: they need from_logits=True"):
        L.LovaszLoss("multilabel", from_logits=False, symmetric=True)  # (was refused at the first call only)
    with pytest.raises(ValueError, match=r"^classes must be class indices >= 0; got -1$"):  # (named 1073741823)
        L.LovaszLoss(classes=[-1])
    for module in (L.LovaszLoss("binary"), L.CrossEntropyLovaszLoss("binary")):  # ('... input []; got []')
        with pytest.raises(ValueError, match=r"^input must be \[B, \*spatial\] or \[B, 1, \*spatial\] in binary mode"):
            module(torch.tensor(0.5), torch.tensor(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_combined_loss_of_half_precision_input_is_in_its_dtype(dtype):
    """As each term alone and torch's CrossEntropyLoss (float32 under autocast only); it was float32."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 3, 4, 5, generator=g).to(dtype), torch.randint(0, 3, (2, 4, 5), generator=g)
    loss = L.CrossEntropyLovaszLoss()
    got = loss(x, y)
    assert got.dtype == dtype
    assert got == (loss.cross_entropy(x, y) + loss.lovasz(x, y).float()).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        assert loss(x, y).dtype == torch.float32

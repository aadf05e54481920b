"""The original ``pytorch/lovasz_losses.py``'s helpers beside the losses (``mean``, ``isnan``, ``xloss``,
``binary_xloss``, ``StableBCELoss``, ``iou``, ``iou_binary``), which ``import lovasz.torch as L`` lacked: each
against Berman's code, written out below as it is there (minus ``Variable``)."""

import inspect
import itertools

import numpy as np
import pytest

from conftest import require

torch = require("torch")
L = require("lovasz.torch")
F = torch.nn.functional


def original_mean(values, ignore_nan=False, empty=0):
    values = iter(values)
    if ignore_nan:
        values = itertools.filterfalse(lambda x: x != x, values)
    try:
        n = 1
        acc = next(values)
    except StopIteration:
        if empty == "raise":
            raise ValueError("Empty mean") from None
        return empty
    for n, v in enumerate(values, 2):  # noqa: B007
        acc += v
    if n == 1:
        return acc
    return acc / n


def original_stable_bce(x, y):
    neg_abs = -x.abs()
    return (x.clamp(min=0) - x * y + (1 + neg_abs.exp()).log()).mean()


def test_the_names_and_signatures_are_the_originals():
    empty = inspect.Parameter.empty
    signatures = {
        "mean": [("l", empty), ("ignore_nan", False), ("empty", 0)],  # (the original's name, keyword too)
        "isnan": [("x", empty)],
        "xloss": [("logits", empty), ("labels", empty), ("ignore", None)],
        "binary_xloss": [("logits", empty), ("labels", empty), ("ignore", None)],
        "iou_binary": [("preds", empty), ("labels", empty), ("EMPTY", 1.0), ("ignore", None), ("per_image", True)],
        "iou": [
            ("preds", empty),
            ("labels", empty),
            ("C", empty),
            ("EMPTY", 1.0),
            ("ignore", None),
            ("per_image", False),
        ],
    }
    for name, expected in signatures.items():
        parameters = inspect.signature(getattr(L, name)).parameters.values()
        assert [(p.name, p.default) for p in parameters] == expected, name
    assert issubclass(L.StableBCELoss, torch.nn.Module)


def test_mean_and_isnan_as_the_original():
    nan = float("nan")
    for values, options in [
        ([1.0, 2.0, 4.0], {}),
        ([1.0, nan, 3.0], dict(ignore_nan=True)),
        ([], dict(empty=7)),
        ([nan], dict(ignore_nan=True, empty=-1)),
        ([5.0], {}),
        ((v for v in [1.0, 2.0]), {}),
    ]:
        values = list(values)
        assert L.mean(values, **options) == original_mean(values, **options)
    tensors = [torch.tensor(1.0, requires_grad=True), torch.tensor(3.0)]
    got = L.mean(tensors)
    got.backward()
    assert float(got.detach()) == 2.0 and float(tensors[0].grad) == 0.5
    assert float(tensors[0].detach()) == 1.0  # (the original's in-place sum wrote 4.0 into its first tensor)
    with pytest.raises(ValueError, match="empty"):
        L.mean([], empty="raise")
    assert L.isnan(nan) and not L.isnan(1.0)
    assert L.isnan(torch.tensor([1.0, nan])).tolist() == [False, True]


def test_cross_entropy_helpers_as_the_original():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, 0] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255)  # theirs, whatever ignore says
    torch.testing.assert_close(L.xloss(logits, labels), expected)
    torch.testing.assert_close(L.xloss(logits, labels, ignore=255), expected)
    labels[1, 1] = 0  # a given ignore is honoured here (theirs dropped 255 still)
    torch.testing.assert_close(
        L.xloss(logits, labels.clamp(max=2), ignore=0), F.cross_entropy(logits, labels.clamp(max=2), ignore_index=0)
    )
    scores, binary = torch.randn(2, 4, 5, generator=g) * 30, torch.randint(0, 2, (2, 4, 5), generator=g)
    torch.testing.assert_close(
        L.StableBCELoss()(scores.flatten(), binary.flatten()),
        original_stable_bce(scores.flatten(), binary.flatten().float()),
    )
    for target in (binary[0, 0, :1].float(), binary[0, 0, 0].float(), binary[0].float()):  # broadcast, as theirs
        torch.testing.assert_close(L.StableBCELoss()(scores, target), original_stable_bce(scores, target))
    with pytest.raises(ValueError, match="Target size"):  # theirs broadcasts [5, 1] and [5] to [5, 5]
        L.StableBCELoss()(scores[0, 0, :, None], binary[0, 0].float())
    with pytest.raises(ValueError, match="Target size"):  # shapes that do not broadcast: torch's message
        L.StableBCELoss()(scores, binary[:, :3].float())
    binary[0, :2] = 255
    kept = binary != 255
    expected = original_stable_bce(scores[kept], binary[kept].float())
    torch.testing.assert_close(L.binary_xloss(scores, binary, ignore=255), expected)
    x = scores.clone().requires_grad_()
    none_left = L.binary_xloss(x, torch.full_like(binary, 255), ignore=255)  # theirs: NaN
    none_left.backward()
    assert float(none_left.detach()) == 0 and not x.grad.any()


def test_iou_helpers_are_the_metrics():
    from lovasz import metrics

    assert L.iou is metrics.iou and L.iou_binary is metrics.iou_binary
    pred, target = np.array([[[0, 1], [1, 1]]]), np.array([[[0, 1], [0, 1]]])
    assert L.iou_binary(pred, target) == pytest.approx(100 * 2 / 3)


def test_lovasz_grad_of_integers_other_than_0_and_1_is_the_originals_formula():
    """The closed form for integer labels read a 2 or a -1 its own way, unlike the original, the float path
    and the other framework; integers now take the original's formula (bools keep the closed form)."""
    tf, LT, LJ = require("tensorflow"), require("lovasz.tf"), require("lovasz.jax")
    for gt in ([0, 2, 0, 1], [0, 0, -1, 1], [1, 0, 1, 1]):
        g = np.asarray(gt, np.float64)
        total = g.sum()
        jaccard = 1 - (total - np.cumsum(g)) / (total + np.cumsum(1 - g))
        expected = np.concatenate([jaccard[:1], np.diff(jaccard)])
        np.testing.assert_allclose(L.lovasz_grad(torch.tensor(gt)).numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(LT.lovasz_grad(tf.constant(gt)).numpy(), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(LJ.lovasz_grad(np.asarray(gt))), expected, rtol=1e-6)


def test_helpers_take_the_originals_argument_names_and_name_mismatched_labels():
    assert L.mean(l=[1.0, 2.0]) == 1.5  # (the original's parameter is l)
    probas, labels = torch.rand(2, 3, 4, 4).softmax(1), torch.randint(0, 3, (2, 4, 3))
    for call in (
        lambda: L.flatten_probas(probas, labels, 255),
        lambda: L.flatten_probas(probas, labels),  # (the original returned 32 pixels and 24 labels)
        lambda: L.flatten_binary_scores(probas[:, 0], labels, 255),
    ):
        with pytest.raises(ValueError, match=r"^labels must hold one label per pixel of (probas|scores) \[2,"):
            call()
    tf, LT = require("tensorflow"), require("lovasz.tf")
    channels_last = tf.constant(probas.permute(0, 2, 3, 1).numpy())
    with pytest.raises(ValueError, match=r"^labels must hold one label per pixel of probas"):
        LT.flatten_probas(channels_last, tf.constant(labels.numpy()), 255)
    with pytest.raises(ValueError, match=r"^labels must hold one label per pixel of scores"):
        LT.flatten_binary_scores(channels_last[..., 0], tf.constant(labels.numpy()), 255)
    flat = tf.function(
        LT.flatten_probas, input_signature=[tf.TensorSpec([None, 4, 4, 3]), tf.TensorSpec(None, tf.int64)]
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must hold one label per pixel of probas"):
        flat(channels_last, tf.constant(labels.numpy()))

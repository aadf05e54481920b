"""Cross-entropy + Lovász as one loss, and the cross-entropy-then-Lovász schedule (PyTorch side)."""

import pytest

from conftest import dev, require, torch_device
from lovasz.schedule import LovaszSchedule

torch = require("torch")
F = require("torch.nn.functional")
L = require("lovasz.torch")


def batch(seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 5, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (2, 5, 6), generator=g)
    labels[0, 0] = 255
    return dev(logits), dev(labels)


def test_multiclass_is_the_weighted_sum_of_its_terms_ignoring_the_same_pixels():
    logits, labels = batch()
    loss = L.CrossEntropyLovaszLoss(ignore_index=255, ce_weight=0.3, lovasz_weight=2.0)
    ce = F.cross_entropy(logits, labels, ignore_index=255)
    lovasz = L.lovasz_softmax(logits, labels, ignore=255, from_logits=True)
    torch.testing.assert_close(loss(logits, labels), 0.3 * ce + 2.0 * lovasz)


def test_class_weights_weigh_both_terms():
    logits, labels = batch()
    w = dev(torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64))
    loss = L.CrossEntropyLovaszLoss(ignore_index=255, class_weights=w)
    ce = F.cross_entropy(logits, labels, weight=w, ignore_index=255)
    lovasz = L.lovasz_softmax(logits, labels, ignore=255, from_logits=True, weights=w)
    torch.testing.assert_close(loss(logits, labels), ce + lovasz)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_binary_and_multilabel_use_bce(mode):
    g = torch.Generator().manual_seed(3)
    shape = (2, 1, 5, 6) if mode == "binary" else (2, 3, 5, 6)
    logits = torch.randn(*shape, generator=g)
    target = torch.randint(0, 2, shape, generator=g)
    target[0, 0, 0] = 255
    logits, target = dev(logits), dev(target)
    valid = target != 255
    loss = L.CrossEntropyLovaszLoss(mode, ignore_index=255)
    bce = F.binary_cross_entropy_with_logits(logits[valid], target[valid].float())
    lovasz = L.LovaszLoss(mode, ignore_index=255)(logits, target)
    torch.testing.assert_close(loss(logits, target), bce + lovasz)
    torch.testing.assert_close(loss(logits, target[:, 0]) if mode == "binary" else bce + lovasz, bce + lovasz)


def test_every_pixel_ignored_gives_zero_not_nan():
    logits, labels = batch()
    logits.requires_grad_()
    loss = L.CrossEntropyLovaszLoss(ignore_index=255)(logits, torch.full_like(labels, 255))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("junk", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_logits_at_ignored_pixels_change_nothing(mode, junk):
    """A NaN or an infinity at an ignored pixel (a ``masked_fill`` with -inf) made the cross-entropy NaN,
    NaN * 0 in its masked mean, and the gradient there: now the loss and the gradient of the other pixels
    are those of clean logits, and an ignored pixel's gradient is 0."""
    g = torch.Generator().manual_seed(5)
    shape = (2, 3, 4, 5) if mode != "binary" else (2, 1, 4, 5)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64)
    high = 3 if mode == "multiclass" else 2
    target = torch.randint(0, high, (2, 4, 5) if mode == "multiclass" else shape, generator=g)
    ignored = torch.zeros(target.shape, dtype=torch.bool)
    ignored[0, ..., 1, 2] = True
    target[ignored] = 255
    weights = {"multiclass": [1.0, 2.0, 0.5], "binary": None, "multilabel": [1.0, 2.0, 0.5]}[mode]
    loss = L.CrossEntropyLovaszLoss(mode, ignore_index=255, class_weights=weights)
    at = ignored.unsqueeze(1).expand(shape) if mode == "multiclass" else ignored
    dirty = dev(logits.masked_fill(at, junk)).requires_grad_()
    clean = dev(logits).requires_grad_()
    expected, got = loss(clean, dev(target)), loss(dirty, dev(target))
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(dirty.grad, clean.grad.masked_fill(dev(at), 0))
    assert torch.all(dirty.grad[dev(at)] == 0)


def test_zero_weight_term_is_skipped_and_both_zero_still_backpropagates():
    logits, labels = batch()
    loss = L.CrossEntropyLovaszLoss(ignore_index=255, lovasz_weight=0.0)
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels, ignore_index=255))
    loss.ce_weight = 0.0
    x = logits.clone().requires_grad_()
    out = loss(x, labels)
    out.backward()
    assert out.item() == 0 and x.grad is not None


def test_cross_entropy_alone_checks_what_the_lovasz_term_checks():
    """With the Lovász term off (a weight of 0, a schedule's warm-up) wrong class weights gave an IndexError, a
    broadcast error or a silent value, and set term weights went unchecked (a negative one: a negative loss)."""
    logits, labels = batch(classes=3)
    for mode, x, y, weights in (
        ("multiclass", logits, labels, [1.0, 2.0]),
        ("multiclass", logits, labels, [1.0, 2.0, 3.0, 4.0]),
        ("multilabel", logits, (logits > 0).long(), [1.0, 2.0]),
        ("multiclass", logits[:, :1], (labels == 1).long(), [1.0, 2.0, 3.0]),  # one channel: two classes
    ):
        loss = L.CrossEntropyLovaszLoss(mode, class_weights=weights, lovasz_weight=0.0)
        with pytest.raises(ValueError, match=r"^class_weights must have shape \[\d\] \(one weight per class\)"):
            loss(x, y)
    learned = torch.nn.Parameter(dev(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    loss = L.CrossEntropyLovaszLoss(class_weights=learned, lovasz_weight=0.0)
    loss(logits, labels.clamp(0, 2)).backward()
    assert learned.grad is not None  # (a learned weight keeps its gradient through the check)
    with torch.no_grad():
        learned[1] = -1.0  # an optimiser's step, say
    with pytest.raises((ValueError, RuntimeError), match="class_weights must be finite numbers >= 0"):
        loss(logits, labels.clamp(0, 2))
    combined = L.CrossEntropyLovaszLoss(lovasz_weight=0.0)
    for name, bad in (("ce_weight", -1.0), ("lovasz_weight", float("nan")), ("ce_weight", "1")):
        with pytest.raises((ValueError, TypeError), match=f"^{name} must be"):
            setattr(combined, name, bad)
    combined.lovasz_weight = 2  # checked, and kept as a float
    assert combined.lovasz_weight == 2.0 and type(combined.lovasz_weight) is float
    for mode, bad in (("multiclass", torch.randn(5)), ("multilabel", torch.randn(5)), ("binary", torch.randn(()))):
        with pytest.raises(ValueError, match=r"^input must be"):
            L.CrossEntropyLovaszLoss(mode, lovasz_weight=0.0)(bad, torch.zeros(bad.shape, dtype=torch.long))


def test_schedule_switches_and_ramps():
    switch = LovaszSchedule(warmup=3)
    assert [switch.weights(t) for t in (0, 2, 3, 10)] == [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, 1.0)]
    ramp = LovaszSchedule(warmup=1, ramp=4, final_ce_weight=1.0, lovasz_weight=0.5)
    assert [ramp.weights(t) for t in range(6)] == [
        (1.0, 0.0),
        (1.0, 0.125),
        (1.0, 0.25),
        (1.0, 0.375),
        (1.0, 0.5),
        (1.0, 0.5),
    ]
    loss = ramp.apply(L.CrossEntropyLovaszLoss(), 2)
    assert (loss.ce_weight, loss.lovasz_weight) == (1.0, 0.25)


@pytest.mark.parametrize(
    "bad", [dict(warmup=-1), dict(warmup=1.5), dict(warmup=1, ramp=True), dict(warmup=1, final_ce_weight=-0.1)]
)
def test_schedule_rejects_bad_arguments(bad):
    wrong_type = any(isinstance(v, bool) or isinstance(v, float) and k != "final_ce_weight" for k, v in bad.items())
    with pytest.raises(
        TypeError if wrong_type else ValueError, match=next(iter(k for k in bad if k != "warmup"), "warmup")
    ):
        LovaszSchedule(**bad)


def test_schedule_in_a_plain_training_loop_reaches_lovasz():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1).to(torch_device())
    x = dev(torch.randn(4, 3, 8, 8))
    y = x[:, :3].argmax(1)  # learnable: the brightest channel
    loss_fn, schedule = L.CrossEntropyLovaszLoss(), LovaszSchedule(warmup=5, ramp=5)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    seen = []
    for step in range(15):
        schedule.apply(loss_fn, step)
        seen.append((loss_fn.ce_weight, loss_fn.lovasz_weight))
        loss = loss_fn(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert seen[0] == (1.0, 0.0) and seen[-1] == (0.0, 1.0)
    assert L.lovasz_softmax(model(x), y, from_logits=True).item() < 0.5


def test_a_combined_loss_pickled_before_its_weights_were_properties_loads():
    """A module pickled when ``ce_weight`` and ``lovasz_weight`` were plain attributes keeps them."""
    import pickle

    loss = L.CrossEntropyLovaszLoss(ce_weight=0.5, lovasz_weight=2.0, ignore_index=255)
    state = dict(loss.__dict__)
    state["ce_weight"], state["lovasz_weight"] = state.pop("_ce_weight"), state.pop("_lovasz_weight")
    old = L.CrossEntropyLovaszLoss.__new__(L.CrossEntropyLovaszLoss)
    old.__setstate__(state)
    assert (old.ce_weight, old.lovasz_weight) == (0.5, 2.0)
    restored = pickle.loads(pickle.dumps(old))
    logits, labels = batch()
    torch.testing.assert_close(restored(logits, labels), loss(logits, labels))

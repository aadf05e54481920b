"""LovaszSchedule's argument checks: every weight a finite non-negative number, every count a non-negative int."""

import math
from fractions import Fraction

import numpy as np
import pytest

from lovasz.schedule import LovaszSchedule

WEIGHTS = ("final_ce_weight", "lovasz_weight")


@pytest.mark.parametrize("name", WEIGHTS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf")], ids=repr)
def test_nan_and_inf_weights_are_refused(name, bad):
    with pytest.raises(ValueError, match=rf"{name} must be a finite non-negative number; got (nan|inf|-inf|np\.)"):
        LovaszSchedule(1, **{name: bad})


@pytest.mark.parametrize("name", WEIGHTS)
@pytest.mark.parametrize(
    ("bad", "kind"),
    [(True, "bool"), (np.True_, "bool"), ("1", "str"), (None, "NoneType"), (1 + 0j, "complex"), ([1.0], "list")],
)
def test_weights_that_are_no_real_number_are_refused(name, bad, kind):
    with pytest.raises(ValueError, match=rf"{name} must be a finite non-negative number; got .* of type {kind}"):
        LovaszSchedule(1, **{name: bad})


@pytest.mark.parametrize("name", WEIGHTS)
def test_negative_and_overflowing_weights_are_refused(name):
    with pytest.raises(ValueError, match=rf"{name} must be a finite non-negative number; got -0.5"):
        LovaszSchedule(1, **{name: -0.5})
    with pytest.raises(ValueError, match=rf"{name} must be a finite non-negative number; got 1000"):
        LovaszSchedule(1, **{name: 10**400})  # no float holds it


@pytest.mark.parametrize("name", ["warmup", "ramp"])
@pytest.mark.parametrize(
    ("bad", "came"),
    [
        (-1, "got -1$"),
        (np.int64(-2), "got -2$"),
        (1.0, "got 1.0 of type float"),
        (True, "got True of type bool"),
        (np.True_, r"got (np\.True_|True) of type bool"),
        ("2", "got '2' of type str"),
        (None, "got None of type NoneType"),
    ],
)
def test_counts_must_be_non_negative_ints(name, bad, came):
    arguments = {"warmup": 1, name: bad}
    error = ValueError if "type" not in came else TypeError  # a value out of range, or no int at all
    with pytest.raises(error, match=rf"{name} must be a non-negative int; {came}"):
        LovaszSchedule(**arguments)


@pytest.mark.parametrize(
    ("bad", "came"), [(-1, "got -1$"), (1.5, "got 1.5 of type float"), (False, "got False of type bool"), ("3", "str")]
)
def test_the_step_must_be_a_non_negative_int(bad, came):
    schedule = LovaszSchedule(warmup=2, ramp=2)
    for call in (schedule.progress, schedule.weights, lambda t: schedule.apply(Weights(), t)):
        with pytest.raises(ValueError if bad == -1 else TypeError, match=rf"t must be a non-negative int; .*{came}"):
            call(bad)


class Weights:
    ce_weight, lovasz_weight = 1.0, 0.0


def test_accepted_values_give_the_hand_computed_weights():
    # Ints, NumPy numbers and fractions are weights and counts as good as floats: 0 switches at once.
    schedule = LovaszSchedule(
        np.int64(1), ramp=np.int32(2), final_ce_weight=Fraction(1, 2), lovasz_weight=np.float32(2)
    )
    assert [schedule.weights(t) for t in (0, np.int64(1), 2, 3)] == [(1.0, 0.0), (0.75, 1.0), (0.5, 2.0), (0.5, 2.0)]
    assert all(type(w) is float for t in range(4) for w in schedule.weights(t))
    with pytest.raises(ValueError, match=r"^final_ce_weight and lovasz_weight are both 0"):
        LovaszSchedule(2, final_ce_weight=0, lovasz_weight=0)  # a loss of 0 after the ramp: training stopped
    # a ramp of R steps is whole at warmup + R - 1, as documented: ramp=1 switches at once as ramp=0 does
    assert [LovaszSchedule(2, ramp=1).weights(t) for t in range(4)] == [LovaszSchedule(2).weights(t) for t in range(4)]
    big = LovaszSchedule(3, final_ce_weight=1e300)  # large but finite: the warm-up is still CE alone
    assert big.weights(0) == (1.0, 0.0) and big.weights(3) == (1e300, 1.0)
    loss = schedule.apply(Weights(), 1)
    assert (loss.ce_weight, loss.lovasz_weight) == (0.75, 1.0)


def test_apply_refuses_a_loss_without_the_two_weights():
    """LovaszSchedule.apply(LovaszLoss(), t) set two attributes the Lovász loss never reads, without a word."""
    lovasz_torch = pytest.importorskip("lovasz.torch")
    with pytest.raises(TypeError, match="LovaszLoss has no ce_weight or lovasz_weight"):
        LovaszSchedule(2).apply(lovasz_torch.LovaszLoss(), 0)
    assert not hasattr(lovasz_torch.LovaszLoss(), "ce_weight")

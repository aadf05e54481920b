"""lovasz.jax's sort layout for accelerators, run on the CPU: float32 rows are sorted one row at a time,
an int32 key carrying int32 indices, the form XLA sends to CUB's radix sort on a GPU (dense rows by one
such sort, the points of segments by two). Checked here: the lowered program has that form, and the path
gives the oracle's losses and tie-order subgradients."""

import re

import numpy as np

from conftest import require
from lovasz import reference as R

jax = require("jax")
jnp = jax.numpy
JR = require("lovasz._jax_rows")


def test_float32_rows_lower_to_one_dimensional_integer_sorts():
    errors = jnp.zeros((2, 3, 1000), jnp.float32)
    codes = jnp.zeros((2, 3, 1000), jnp.uint8)
    text = jax.jit(jax.grad(lambda e: JR._sorted_rows(e, codes).sum())).lower(errors).as_text()
    sorts = re.findall(r"stablehlo\.sort\"?\(([^)]*)\).*?\}\) : \(([^)]*)\)", text, flags=re.S)
    assert sorts, text
    for _, operand_types in sorts:
        assert operand_types.split(", ") == ["tensor<2000xi32>", "tensor<2000xi32>"], operand_types
    comparators = re.findall(r"stablehlo\.compare\s+(\w+), %\w+, %\w+(?:, (\w+))?", text)
    assert ("LT", "SIGNED") in comparators


def test_row_sort_path_gives_the_oracle_losses_and_tie_subgradients():
    """Errors with many exact ties, negative ones (a hinge's), ignored pixels."""
    rng = np.random.default_rng(0)
    errors = rng.choice([0.0, 0.25, 0.5, 1.0, 1.5, -0.5], size=(2, 3, 60)).astype(np.float32)
    errors[0, 0, :10] = rng.random(10)
    codes = rng.integers(0, 3, errors.shape).astype(np.uint8)
    loss = JR._sorted_rows(jnp.asarray(errors), jnp.asarray(codes))
    grad = np.asarray(jax.grad(lambda e: JR._sorted_rows(e, jnp.asarray(codes)).sum())(jnp.asarray(errors)))
    for r in range(3):
        e, c = errors[:, r].reshape(-1).astype(np.float64), codes[:, r].reshape(-1)
        valid = c != 2
        counted, fg = np.maximum(e[valid], 0), (c[valid] == 1).astype(float)
        np.testing.assert_allclose(loss[r], R.lovasz_extension(counted, fg), rtol=1e-6)
        expected = np.zeros(e.shape)
        expected[valid] = R.lovasz_extension_grad(counted, fg) * (counted > 0)
        np.testing.assert_allclose(grad[:, r].reshape(-1), expected, atol=1e-7)


def sorts_in(text):
    """Each sort of a lowered program: (its comparator's text, its operand types)."""
    return re.findall(r"stablehlo\.sort\"?\([^)]*\)(.*?)\}\) : \(([^)]*)\)", text, flags=re.S)


def test_float32_segments_lower_to_sorts_of_one_integer_key_and_two_operands():
    errors = jnp.zeros((3, 1000), jnp.float32)
    codes = jnp.zeros((3, 1000), jnp.uint8)
    ends = jnp.asarray([200, 200, 900], jnp.int32)
    grad = jax.grad(lambda e: JR._segment_rows_sorted(e, codes, ends)[0].sum())
    sorts = sorts_in(jax.jit(grad).lower(errors).as_text())
    assert len(sorts) == 2, sorts  # by error, then by segment
    for comparator, operand_types in sorts:
        assert operand_types.split(", ") == ["tensor<1000xi32>", "tensor<1000xi32>"], operand_types
        assert comparator.count("stablehlo.compare") == 1, comparator  # one key


def oracle_segments(errors, codes, ends):
    """Loss, presence [S, K] and gradient [K, N] of each (segment, class) row by lovasz.reference."""
    num_rows, num_points = errors.shape
    loss, present = np.zeros((len(ends), num_rows)), np.zeros((len(ends), num_rows), bool)
    grad = np.zeros(errors.shape)
    for s, (start, end) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
        for r in range(num_rows):
            e, c = errors[r, start:end].astype(np.float64), codes[r, start:end]
            valid = c != 2
            counted, fg = np.maximum(e[valid], 0), (c[valid] == 1).astype(float)
            present[s, r] = fg.any()
            if counted.size:
                loss[s, r] = R.lovasz_extension(counted, fg)
                g = np.zeros(e.shape)
                g[valid] = R.lovasz_extension_grad(counted, fg) * (counted > 0)
                grad[r, start:end] = g
    return loss, present, grad


def test_float32_segment_sorts_give_the_oracle_losses_and_tie_subgradients():
    """Exact ties (saturated errors), negative errors (a hinge's), ignored points, an empty segment,
    points past the last segment (in none), and a NaN error at a valid point."""
    rng = np.random.default_rng(5)
    num_rows, num_points = 3, 90
    errors = rng.choice([0.0, 1.0, 0.25, 0.5, -0.5], size=(num_rows, num_points)).astype(np.float32)
    errors[0, :20] = rng.random(20)
    codes = rng.choice([0, 1, 2], size=errors.shape, p=[0.5, 0.35, 0.15]).astype(np.uint8)
    ends = np.array([12, 12, 40, 41, 80])  # segment 1 empty, points 80.. in no segment
    nan_row, nan_point, nan_segment = 1, 50, 4
    codes[nan_row, nan_point] = 1
    errors[nan_row, nan_point] = np.nan
    expected_loss, expected_present, expected_grad = oracle_segments(errors, codes, ends)

    def losses(e):
        return JR._segment_rows_sorted(e, jnp.asarray(codes), jnp.asarray(ends, jnp.int32))

    (loss, present), vjp = jax.vjp(losses, jnp.asarray(errors))
    weights = jnp.asarray(rng.random(expected_loss.shape), jnp.float32)
    grad = np.asarray(vjp((weights, np.zeros(present.shape, jax.dtypes.float0)))[0])
    loss = np.asarray(loss)
    assert np.isnan(loss[nan_segment, nan_row]) and np.isnan(grad[nan_row, nan_point])
    finite = np.ones(loss.shape, bool)
    finite[nan_segment, nan_row] = False
    np.testing.assert_allclose(loss[finite], expected_loss[finite], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(present), expected_present)
    assert not loss[1].any() and not grad[:, 80:].any()
    expected_grad *= np.asarray(weights).T[:, np.searchsorted(ends, np.arange(num_points), side="right").clip(0, 4)]
    checked = np.ones(grad.shape, bool)
    checked[nan_row, ends[nan_segment - 1] : ends[nan_segment]] = False  # the NaN's segment: NaN loss
    np.testing.assert_allclose(grad[checked], expected_grad[checked], atol=1e-7)


def test_float32_segment_sorts_equal_the_one_sort_of_two_keys():
    """The two sorts order every segment's run as the one lax.sort by (segment, error) does (float64's)."""
    rng = np.random.default_rng(6)
    errors = jnp.asarray(rng.choice([0.0, 1.0, 0.5, 0.3], size=(4, 500)), jnp.float32)
    codes = jnp.asarray(rng.integers(0, 3, (4, 500)), jnp.uint8)
    ends = jnp.asarray([0, 100, 100, 320, 499], jnp.int32)
    weights = jnp.arange(20.0).reshape(5, 4)

    def run(engine):
        loss, present = engine(errors, codes, ends)
        return loss, present, jax.grad(lambda e: (engine(e, codes, ends)[0] * weights).sum())(errors)

    for got, want in zip(run(JR._segment_rows_two_sorts), run(JR._segment_rows_one_sort)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)

"""lovasz.jax's sort layout for accelerators, run on the CPU: float32 rows are sorted one row at a time,
an int32 key carrying int32 indices, the form XLA sends to CUB's radix sort on a GPU. Checked here: the
lowered program has that form, and the path gives the oracle's losses and tie-order subgradients."""

import re

import numpy as np

from conftest import require
from lovasz import reference as R

jax = require("jax")
jnp = jax.numpy
LJ = require("lovasz.jax")


def test_float32_rows_lower_to_one_dimensional_integer_sorts():
    errors = jnp.zeros((2, 3, 1000), jnp.float32)
    codes = jnp.zeros((2, 3, 1000), jnp.uint8)
    text = jax.jit(jax.grad(lambda e: LJ._sorted_rows(e, codes).sum())).lower(errors).as_text()
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
    loss = LJ._sorted_rows(jnp.asarray(errors), jnp.asarray(codes))
    grad = np.asarray(jax.grad(lambda e: LJ._sorted_rows(e, jnp.asarray(codes)).sum())(jnp.asarray(errors)))
    for r in range(3):
        e, c = errors[:, r].reshape(-1).astype(np.float64), codes[:, r].reshape(-1)
        valid = c != 2
        counted, fg = np.maximum(e[valid], 0), (c[valid] == 1).astype(float)
        np.testing.assert_allclose(loss[r], R.lovasz_extension(counted, fg), rtol=1e-6)
        expected = np.zeros(e.shape)
        expected[valid] = R.lovasz_extension_grad(counted, fg) * (counted > 0)
        np.testing.assert_allclose(grad[:, r].reshape(-1), expected, atol=1e-7)

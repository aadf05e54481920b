"""The small integers that cross module and language boundaries, in one place.

A pixel's code in a class row (uint8): every path reads these, the C kernel (``_kernel.c``'s
first enum), the Triton kernels, and the rows of lovasz.torch, lovasz.tf and lovasz.jax.
The error forms are how the C kernel reads a prediction (``_kernel.c``'s second enum).
``tests/test_kernel_build.py`` checks that the C source says the same.
"""

# A pixel's code in a class row.
BACKGROUND = 0
FOREGROUND = 1
IGNORED = 2  # left out of the row's set: no error, a zero gradient

# How the C kernel reads a prediction x at a foreground (fg) or background pixel.
SOFTMAX = 0  # error |[fg] - x|
HINGE = 1  # error max(0, 1 - x) at fg, max(0, 1 + x) elsewhere
ERRORS = 2  # x is the error itself (negative counts as 0); the gradient is d loss / d error

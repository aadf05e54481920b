"""Exact, vectorised Lovász-Softmax and Lovász hinge losses (Berman et al., CVPR 2018).

Import the module of your framework: ``lovasz.torch``, ``lovasz.tf``, ``lovasz.keras``
or ``lovasz.jax``; ``lovasz.reference`` is the NumPy oracle. This package itself
imports no framework.
"""

__version__ = "0.1.0"

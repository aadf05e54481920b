"""Builds the optional C kernel; everything else is in pyproject.toml."""

from setuptools import Extension, setup

# optional: without a C compiler the package still installs, and lovasz.torch sorts with torch.sort.
setup(ext_modules=[Extension("lovasz._kernel", ["src/lovasz/_kernel.c"], extra_compile_args=["-O3"], optional=True)])

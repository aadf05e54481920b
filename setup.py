"""Builds the optional C kernel; everything else is in pyproject.toml.

The kernel (src/lovasz/_kernel.c) is a CPython extension module only so that pip builds it and
``import lovasz._kernel`` finds its file; lovasz._ckernel then calls its C function through ctypes.
Its one Python entry point, PyInit__kernel, is in the limited API, so it is built against CPython's
stable ABI (3.10 on): one binary per platform serves every CPython >= 3.10, and the wheel is tagged
``cp310-abi3-<platform>``. Not ``py3-none-<platform>``, as a plain ctypes library would be: the file is
imported as a module, which only CPython's loader does with an abi3 file (PyPy and GraalPy install the
sdist instead, and sort with their framework). Free-threaded CPython before 3.15 has no stable ABI:
there the kernel is built against the full API, with that interpreter's own tag.

Without a C compiler the package still installs: the extension is optional, setuptools warns,
and the frameworks' sorts take its place (same values, slower). ``LOVASZ_BUILD_KERNEL=required``
(``make dist``) or ``CIBUILDWHEEL=1`` (cibuildwheel) make a failed build an error instead, so that
no wheel is shipped without the kernel.
"""

import importlib.machinery
import os
import platform
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

# gcc and clang (and compilers that take their options): warnings on, as in tests/test_kernel_build.py,
# which compiles the file with -std=c99 -Wall -Wextra -pedantic -Werror. No -std here: the dialect of
# Python.h is the compiler's default's business. MSVC gets distutils' defaults (/O2 /W3).
GCC_LIKE_FLAGS = ["-O3", "-Wall", "-Wextra", "-pedantic"]

LIMITED_API = platform.python_implementation() == "CPython" and not sysconfig.get_config_var("Py_GIL_DISABLED")
REQUIRED = os.environ.get("LOVASZ_BUILD_KERNEL") == "required" or os.environ.get("CIBUILDWHEEL") == "1"


class BuildKernel(build_ext):
    """build_ext with the warning flags that the compiler accepts."""

    def build_extensions(self):
        if self.compiler.compiler_type != "msvc":
            flags = [flag for flag in GCC_LIKE_FLAGS if self._accepts(flag)]
            for extension in self.extensions:
                extension.extra_compile_args = flags + list(extension.extra_compile_args)
        super().build_extensions()

    def build_extension(self, extension):
        try:
            super().build_extension(extension)
        except Exception as error:
            if extension.optional:
                raise  # setuptools warns, and installs the package without it
            raise CompileError(
                f"the C kernel is required here (LOVASZ_BUILD_KERNEL=required, or cibuildwheel) and did not "
                f"build: {error}. A C compiler (gcc, clang, MSVC) and the Python headers are needed."
            ) from error

    def copy_extensions_to_source(self):
        """An in-place build (editable install, build_ext --inplace) replaces the module's builds with other
        suffixes: an older _kernel.cpython-311-*.so would be imported before the new _kernel.abi3.so."""
        super().copy_extensions_to_source()
        package_dir = self.get_finalized_command("build_py").get_package_dir("lovasz")
        for extension in self.extensions:
            built = Path(package_dir, Path(self.get_ext_filename(extension.name)).name)
            stem = built.name.split(".")[0]
            for suffix in importlib.machinery.EXTENSION_SUFFIXES if built.exists() else ():
                other = built.with_name(stem + suffix)
                if other != built and other.exists():
                    other.unlink()

    def _accepts(self, flag: str) -> bool:
        """Whether the compiler compiles a trivial file with ``flag`` (an unknown option is an error under
        -Werror); False also where there is no compiler, and then the build itself fails as it would."""
        with tempfile.TemporaryDirectory() as directory:
            source = os.path.join(directory, "probe.c")
            with open(source, "w") as file:
                file.write("int main(void) { return 0; }\n")
            try:
                self.compiler.compile([source], output_dir=directory, extra_postargs=[flag, "-Werror"])
            except Exception:  # CompileError, or the compiler not found
                return False
        return True


kernel = Extension(
    "lovasz._kernel",
    ["src/lovasz/_kernel.c"],
    define_macros=[("Py_LIMITED_API", "0x030A0000")] if LIMITED_API else [],
    py_limited_api=LIMITED_API,
    optional=not REQUIRED,
)

setup(
    ext_modules=[kernel],
    cmdclass={"build_ext": BuildKernel},
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if LIMITED_API else {},
)

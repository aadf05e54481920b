"""The doctests of src/lovasz: a module whose framework is not installed is not collected, unless
LOVASZ_REQUIRE names that framework (then its import error fails the run, as in tests/)."""

import importlib.util
import os

_REQUIRED = {name for name in os.environ.get("LOVASZ_REQUIRE", "").split(",") if name}
# each framework's public module and its private engines (_tf_rows.py, _jax_distributed.py, ...)
_FRAMEWORK_MODULES = {"tensorflow": ["tf.py", "_tf_*.py"], "keras": ["keras.py"], "jax": ["jax.py", "_jax_*.py"]}

collect_ignore_glob = [
    f"src/lovasz/{module}"
    for framework, modules in _FRAMEWORK_MODULES.items()
    if framework not in _REQUIRED and importlib.util.find_spec(framework) is None
    for module in modules
]

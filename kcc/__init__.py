"""kcc: a compiler for the Kendryte K210 KPU (float .tflite -> kmodel v4).

Kept import-light on purpose: `import kcc.kmodel` must not pull in tflite or OR-tools, so the public
API is bound on first use (PEP 562): `kcc.compile(...)` imports the compiler only when called.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "compile"]


def __getattr__(name: str) -> Any:
    if name == "compile":
        from kcc.api import compile

        return compile
    raise AttributeError(f"module 'kcc' has no attribute '{name}'")

"""kcc: a compiler for the Kendryte K210 KPU (float .tflite -> kmodel v4).

Kept import-light on purpose: `import kcc.kmodel` must not pull in tflite or OR-tools.
"""

__version__ = "0.1.0"

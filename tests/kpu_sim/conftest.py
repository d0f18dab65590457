"""Make `sim_helpers.py` (tiny-kmodel builders shared by these tests) importable.

Only this folder goes on sys.path, not tests/, whose `kpu_sim` folder would shadow the package.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

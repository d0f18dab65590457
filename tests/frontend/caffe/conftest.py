"""Make `caffe_nets` (the in-process Caffe model builder of these tests) importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

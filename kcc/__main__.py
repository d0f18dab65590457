"""`python -m kcc` is the `kcc` command."""

import sys

from kcc.cli import main

sys.exit(main())

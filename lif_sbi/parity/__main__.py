"""`python -m lif_sbi.parity`: the parity command (and the worker processes it starts)."""

import sys

from .cli import main

sys.exit(main())

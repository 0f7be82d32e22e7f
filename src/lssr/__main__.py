"""``python -m lssr``: the same command line as ``lssr`` (see :mod:`lssr.cli`)."""

import sys

from .cli import main

sys.exit(main())

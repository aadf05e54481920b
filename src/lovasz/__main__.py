"""``python -m lovasz``: the ``lovasz`` command."""

import sys

from lovasz.cli import main

sys.exit(main())

"""``python -m explorer.cli ...``: the same as the ``explorer`` console script."""

import sys

from . import main

sys.exit(main())

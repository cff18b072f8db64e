"""``python -m learnprune`` is the ``learnprune`` command."""

import sys

from learnprune.cli import main

sys.exit(main())

"""`python -m flowdeck.console.cli ...`: the same as the `flowdeck` command."""

import sys

from flowdeck.console.cli import main

sys.exit(main())

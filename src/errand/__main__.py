"""`python -m errand`: the same as the `errand` command."""

import sys

from errand.cli.main import main

sys.exit(main())

"""`python -m mailrouter` is the `mailrouter` command."""

import sys

from mailrouter.cli import main

sys.exit(main())

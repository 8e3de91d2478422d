"""`python -m npuflow.cli`: the `npuflow` command."""

import sys

from npuflow.cli import main

sys.exit(main())

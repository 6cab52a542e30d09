"""`python -m tuneforge ...` is the same as the `tuneforge` command."""

import sys

from tuneforge.cli import main

sys.exit(main())

"""python -m tuneforge.service serve|worker|keys: the service commands without importing the full CLI."""

import sys

from tuneforge.service.commands import main

sys.exit(main())

"""python -m labs.your_engine: see labs/your_engine/cli.py."""

import sys

from labs.your_engine.cli import main

sys.exit(main())

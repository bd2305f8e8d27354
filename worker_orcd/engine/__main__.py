"""`python -m worker_orcd.engine`: the engine process (see engine/process.py)."""

import sys

from worker_orcd.engine.process import main

sys.exit(main())

"""`python -m bench`: the benchmark report (bench.harness.cli)."""

import sys

from bench.harness.cli import main

sys.exit(main())

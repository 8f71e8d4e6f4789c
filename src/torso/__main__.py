"""`python -m torso ...` (and `torchrun ... -m torso ...`) runs the CLI."""

import sys

from torso.cli import main

sys.exit(main())

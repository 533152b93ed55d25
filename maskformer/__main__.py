"""`python -m maskformer ...` (what torchrun runs: `torchrun --nproc_per_node N -m maskformer train ...`)."""

import sys

from maskformer.cli import main

sys.exit(main())

"""`python -m thermorl ...` (and so `accelerate launch -m thermorl train RECIPE`)."""

import sys

from .cli import main

sys.exit(main())

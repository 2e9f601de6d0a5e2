"""`python -m nanochat.data`: the pretraining-data CLI (nanochat.data.pretraining.main)."""

import sys

from nanochat.data.pretraining import main

sys.exit(main())

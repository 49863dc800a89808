"""``python -m alad``: the CLI, also as ``torchrun -m alad ...`` and ``accelerate launch -m alad ...``."""

import sys

from alad.cli import main

if __name__ == "__main__":
    sys.exit(main())

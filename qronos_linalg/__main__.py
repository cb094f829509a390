"""``python -m qronos_linalg …`` runs the ``qronos`` command (e.g. under ``torchrun -m``)."""

import sys

from .cli import main

sys.exit(main())

"""``python -m mom.cli`` (what ``torchrun ... -m mom.cli train`` runs): the ``mom`` command."""

import sys

from mom.cli.main import main

sys.exit(main())

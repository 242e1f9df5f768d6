"""``python -m hfgi3d``: see :mod:`hfgi3d.cli`."""

import sys

from hfgi3d.cli import main

sys.exit(main())

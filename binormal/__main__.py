"""``python -m binormal``: the ``binormal`` console script."""

import sys

from binormal.cli import main

sys.exit(main())

"""``python -m binormal.worker``: one scorer worker (same as ``binormal worker``)."""

import sys

from binormal.cli import main

sys.exit(main(["worker"]))

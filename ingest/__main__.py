"""``python -m ingest``: the ingest service alone (same as ``binormal ingest``)."""

import os
import sys

from common import log
from ingest.app import main

log.configure(os.environ.get("BINORMAL_LOG_LEVEL", "INFO"))
sys.exit(main())

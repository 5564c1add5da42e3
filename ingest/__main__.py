"""``python -m binormal.ingest``: the ingest service alone (same as ``binormal ingest``)."""

import os
import sys

from binormal.common import log
from binormal.ingest.app import main

log.configure(os.environ.get("BINORMAL_LOG_LEVEL", "INFO"))
sys.exit(main())

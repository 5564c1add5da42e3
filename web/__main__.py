"""``python -m web``: the web tier alone (same as ``binormal web``)."""

import os
import sys

from common import log
from web.app import main

log.configure(os.environ.get("BINORMAL_LOG_LEVEL", "INFO"))
sys.exit(main())

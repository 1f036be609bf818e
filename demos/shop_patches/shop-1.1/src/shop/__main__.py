"""``python -m shop``: run the shop (under ``hotpatch run``, or alone with ``--port``)."""

import sys

from shop.service import main

sys.exit(main())

"""``python -m quickstart_app``: run the quickstart service."""

import sys

from quickstart_app.service import main

sys.exit(main())

"""``python -m hotpatch.supervisor run --bind NAME=HOST:PORT ... -- CMD...``."""

import sys

from hotpatch.supervisor import main

sys.exit(main())

"""``python -m hotpatch``: the ``hotpatch`` command."""

import sys

from hotpatch.cli import main

sys.exit(main())

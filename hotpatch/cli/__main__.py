"""``python -m hotpatch.cli``: the ``hotpatch`` command."""

import sys

from hotpatch.cli import main

sys.exit(main())

# PYTHON_ARGCOMPLETE_OK (argcomplete's global completion looks for this marker)
"""The ``hotpatch`` command: one module per group of commands, over the agent's control socket
and the supervisor's status file.
"""

from hotpatch.cli._main import main

__all__ = ["main"]

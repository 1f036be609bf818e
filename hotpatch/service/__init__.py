"""What a supervised service imports: its listening sockets, its preserved state, and the
hand-over protocol it speaks with ``hotpatch run`` (the wire is ``_channel``).

It sits on the core and never imports the agent, the supervisor or the CLI.
"""

from hotpatch.service._api import (
    PreservedDict,
    listen_socket,
    preserved,
    ready,
    ready_for_baseline,
)

__all__ = ["PreservedDict", "listen_socket", "preserved", "ready", "ready_for_baseline"]

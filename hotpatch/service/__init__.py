"""What a supervised service imports: its listening sockets, its preserved state, and the
hand-over protocol it speaks with ``hotpatch run``.

``_api`` is what a service calls; ``_runtime`` answers the supervisor, made of
``_rounds`` (preserved state, handed over in rounds), ``_patches`` (the
registry the supervisor's patches go into) and ``_listeners`` (the passed
sockets: accepts a stopping process no longer takes, connections in flight);
``_channel`` is the wire, the only
part the supervisor imports. It sits on the core and never imports the agent,
the supervisor or the CLI.
"""

from hotpatch.service._api import listen_socket, preserved, ready, ready_for_baseline
from hotpatch.service._rounds import PreservedDict

__all__ = ["PreservedDict", "listen_socket", "preserved", "ready", "ready_for_baseline"]

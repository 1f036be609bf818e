"""``hotpatch make``: a fix commit (or two trees) -> a verified hot patch, or a baseline bundle.

Above the core and beside the supervisor: it uses the agent's verification
child and signing, and nothing but the CLI imports it.
"""

from hotpatch.make._make import MakeResult, Request, make
from hotpatch.make._sources import MakeError

__all__ = ["MakeError", "MakeResult", "Request", "make"]

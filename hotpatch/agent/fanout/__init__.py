"""``install(..., workers=True)``: one patch folder shared by the workers of a pre-fork server
(gunicorn, uvicorn --workers): one worker owns the folder and fans each verified patch out.
"""

from hotpatch.agent.fanout._agent import WorkerAgent

__all__ = ["WorkerAgent"]

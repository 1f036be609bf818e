"""gunicorn settings for wsgi_app.py: three workers, each one applies every patch."""

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = 3
# The default, said out loud: each worker imports the app (and so calls
# hotpatch.install) after the fork. With preload_app = True the app is imported
# once in the master, whose agent threads do not survive the fork.
preload_app = False

"""Built-in hotpatch plugins, installed as the ``hotpatch_plugins`` package."""

"""A small HTTP shop run under ``hotpatch run``: the service of the ``shop_under_load`` demo."""

CODE = "1.1"  # the release this code tree is (baseline bundles ship the next one)

"""A tiny pricing service for the quickstart demo (baseline 2.3): ``python -m quickstart_app``."""

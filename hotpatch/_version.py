"""The version and the distribution's name, each written once (setuptools reads ``__version__``)."""

__all__ = ["DISTRIBUTION", "__version__"]

__version__ = "0.1.0"

# The name on the package index (`pip install pyhotpatch`); the import name and the
# command stay `hotpatch` (the name `hotpatch` on the index belongs to another project).
DISTRIBUTION = "pyhotpatch"

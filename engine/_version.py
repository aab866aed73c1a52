"""The single source of probret's version (read by checkpoints, bundles and indexes)."""

__version__ = "0.1.0"

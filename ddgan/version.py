"""The version of the ddgan package, in one place (setup.py and checkpoints read it)."""

__version__ = "0.1.0"

"""The version of landscape, importable from below the package face."""

__version__ = "0.1.0"

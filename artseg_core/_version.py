"""The one place the version is written (read by the package metadata and the model files)."""
__version__ = "0.2.0"

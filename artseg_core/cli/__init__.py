"""The ``artseg`` command line (one click group) and the demo. The top layer."""

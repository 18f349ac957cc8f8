"""The ``camlens`` command line."""

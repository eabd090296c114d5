"""Handlers behind the ``navit`` command line, one module per area."""

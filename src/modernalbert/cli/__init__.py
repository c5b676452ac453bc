"""The command line: one module per command (``modernalbert/cli/<command>.py``: ``add_arguments(parser)`` and
``run(args) -> int``, heavy imports inside ``run``), dispatched by the light entry point :mod:`modernalbert_cli`."""

"""The ``modernalbert`` command line: a thin dispatcher from subcommands to library functions."""

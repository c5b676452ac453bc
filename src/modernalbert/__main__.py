"""``python -m modernalbert SUBCOMMAND ...``: the same command line as the ``modernalbert`` script."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m vispos ...``: the ``vispos`` command (:func:`vispos.cli.main`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

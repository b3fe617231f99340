"""``python -m daskgru``: the same as the ``daskgru`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

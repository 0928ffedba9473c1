"""``python -m flamingo_corpus ...``: the same commands as the ``flamingo-corpus`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m cyclegan``, the same as the ``cyclegan`` command; torchrun runs it as ``-m cyclegan``."""

import sys

from cyclegan.cli import main

if __name__ == "__main__":
    sys.exit(main())

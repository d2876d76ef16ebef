"""``python -m mixnb.bench`` (``make bench``): ``mixnb.bench.cli.main``."""

import sys

from mixnb.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m cnnlab.seeds ...`: the same as the `cnnlab-seeds` console script."""

import sys

from cnnlab.seeds.command import main

if __name__ == "__main__":
    sys.exit(main())

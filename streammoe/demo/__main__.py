"""`python -m streammoe.demo [options]`: the same as `streammoe demo [options]`."""

import sys

from streammoe.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))

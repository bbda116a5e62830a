#!/usr/bin/env python
"""awm's command line from a checkout: `python main.py --help`. The code lives in awm/cli.py."""
import sys

from awm.cli import main

if __name__ == "__main__":
    sys.exit(main())

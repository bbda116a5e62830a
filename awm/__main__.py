"""`python -m awm`: the command line."""
import sys

from awm.cli import main

sys.exit(main())

import sys

from cmpt.cli import main

sys.exit(main())

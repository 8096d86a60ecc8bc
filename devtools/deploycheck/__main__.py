import sys

from devtools.deploycheck.cli import main

sys.exit(main())

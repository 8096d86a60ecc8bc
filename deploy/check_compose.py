"""Former place of the deployment checker, kept so ``python -m deploy.check_compose`` still works.

The checker is ``devtools.deploycheck`` (a developer tool, outside the runtime wheel)."""

import sys

from devtools.deploycheck.cli import main

if __name__ == "__main__":
    sys.exit(main())

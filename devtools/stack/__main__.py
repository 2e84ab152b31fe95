"""`python -m devtools.stack start|stop|airflow`: see devtools.stack.cli."""

import sys

from devtools.stack.cli import main

sys.exit(main())

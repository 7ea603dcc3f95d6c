"""``python -m pipeline.api serve|apikey ...``: the service's commands without `cdrpipe`."""

import sys

from pipeline.api.cli import main

sys.exit(main())

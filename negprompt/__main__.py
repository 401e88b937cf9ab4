"""``python -m negprompt``: the command line (see negprompt.cli)."""

import sys

from negprompt.cli import main

sys.exit(main())

"""``python -m ecomllm <command>``: see :mod:`ecomllm.cli`."""

import sys

from .cli import main

sys.exit(main())

"""``python -m xend_vnet.vn``: the vn tool."""

import sys

from .main import main

sys.exit(main())

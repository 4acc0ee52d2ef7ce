from __future__ import annotations

import sys

from esf.cli import main

sys.exit(main())

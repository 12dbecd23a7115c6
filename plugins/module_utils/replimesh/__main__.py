"""`python3 -m replimesh`: the same as the `replimesh` launcher."""

import sys

from .cli import main

sys.exit(main())

"""``python -m attnlrp.cli`` (as ``torchrun -m attnlrp.cli evaluate`` starts it), the same as ``attnlrp``."""

import sys

from . import main

sys.exit(main())

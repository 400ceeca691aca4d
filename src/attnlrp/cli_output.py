"""What every command line subcommand shares in how it reports: warnings become one line on standard error."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable


def report_unruled_operations(run: Callable[[], Any]) -> Any:
    """Run ``run``; the warning about operations without a rule becomes one line on standard error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    for warning in caught:
        if "without an LRP rule" in str(warning.message):
            print(f"warning: {warning.message}", file=sys.stderr)
    return result

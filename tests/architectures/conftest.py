"""``ATTNLRP_SUPPORT_REPORT=path.json pytest tests/architectures tests/test_real_models.py`` writes, per
architecture, which checks ran and passed and the largest ledger residual measured (see support_report.py;
``scripts/support_table.py`` makes the README's support table from it). Without the variable nothing happens."""

from .support_report import activate


def pytest_configure(config):
    activate(config)

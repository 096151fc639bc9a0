"""Repository-wide pytest setup: the root-only (end-to-end) tests.

Tests marked ``root`` need root, /dev/net/tun, network namespaces and the
iproute2/ping tools.  On a developer machine without them they are skipped;
with XEND_VNET_REQUIRE_E2E=1 (set by ``make test``, hence by CI) a missing
prerequisite fails them instead, so a green run never hides skipped
network tests.
"""

import os
import shutil

import pytest


def _missing_prerequisites() -> list:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            missing.append(f"the {tool} command")
    return missing


def pytest_collection_modifyitems(config, items):
    root_items = [item for item in items if "root" in item.keywords]
    missing = _missing_prerequisites() if root_items else []
    if not missing:
        return
    reason = "end-to-end tests need " + ", ".join(missing)
    if os.environ.get("XEND_VNET_REQUIRE_E2E") == "1":
        raise pytest.UsageError(
            f"{reason}; XEND_VNET_REQUIRE_E2E=1 forbids skipping them")
    for item in root_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A root test that skips itself (a missing tool, say) must not pass
    # unnoticed where the end-to-end tests are required.
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and "root" in item.keywords
            and os.environ.get("XEND_VNET_REQUIRE_E2E") == "1"):
        report.outcome = "failed"
        report.longrepr = f"end-to-end test skipped where it is required: {report.longrepr}"

"""Repository-wide pytest setup: the root-only (end-to-end) tests, and the
legacy C vnetd that the interop tests run against.

Tests marked ``root`` need root, /dev/net/tun, network namespaces and the
iproute2/ping tools.  On a developer machine without them they are skipped;
with XEND_VNET_REQUIRE_E2E=1 (set by ``make test``, hence by CI) a missing
prerequisite fails them instead, so a green run never hides skipped
network tests.

Tests marked ``legacy_vnetd`` also need the legacy C vnetd binary, which is
never part of this project: its path comes from ``--legacy-vnetd PATH`` or
the environment variable XEND_VNET_LEGACY_VNETD.  Without it they are
skipped, saying so in the summary (``-rs``), even where the end-to-end tests
are required: CI has no legacy binary.  A path given that is not an
executable file is a usage error.
"""

from __future__ import annotations

import os
import shutil

import pytest

LEGACY_ENV = "XEND_VNET_LEGACY_VNETD"
LEGACY_MISSING = ("no legacy C vnetd binary given: pass --legacy-vnetd PATH to pytest or set "
                  f"{LEGACY_ENV}=PATH (the binary is built from Xen's source history, "
                  "docs/design.md 11; it is never part of this project)")


def pytest_addoption(parser):
    parser.addoption("--legacy-vnetd", metavar="PATH", default=None,
                     help=f"the legacy C vnetd binary for the interop tests "
                          f"(default: ${LEGACY_ENV})")


def legacy_vnetd(config) -> str | None:
    """The legacy binary's path, if one was given."""
    return config.getoption("--legacy-vnetd") or os.environ.get(LEGACY_ENV) or None


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
    legacy_items = [item for item in items if item.get_closest_marker("legacy_vnetd")]
    if legacy_items:
        path = legacy_vnetd(config)
        if path is None:
            for item in legacy_items:
                item.add_marker(pytest.mark.skip(reason=LEGACY_MISSING))
        elif not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise pytest.UsageError(f"legacy vnetd {path!r}: not an executable file")
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
    # unnoticed where the end-to-end tests are required; only the absent
    # legacy binary, which CI never has, stays a (visible) skip.
    outcome = yield
    report = outcome.get_result()
    legacy_absent = (item.get_closest_marker("legacy_vnetd") is not None
                     and legacy_vnetd(item.config) is None)
    if (report.skipped and "root" in item.keywords and not legacy_absent
            and os.environ.get("XEND_VNET_REQUIRE_E2E") == "1"):
        report.outcome = "failed"
        report.longrepr = f"end-to-end test skipped where it is required: {report.longrepr}"


@pytest.fixture(scope="session")
def legacy_vnetd_binary(request) -> str:
    """The legacy C vnetd's path; the test is skipped, saying how to give it, without one."""
    path = legacy_vnetd(request.config)
    if path is None:
        pytest.skip(LEGACY_MISSING)
    return path

"""vnetd's one-engine-per-namespace lock (design.md 5)."""

from __future__ import annotations

import os

import pytest

from xend_vnet.kernel_shim.daemon import StartupError, take_netns_lock


def test_second_engine_in_the_namespace_is_refused_with_the_holder(tmp_path):
    first = take_netns_lock(str(tmp_path))
    try:
        with pytest.raises(StartupError, match=rf"already running .*\(pid {os.getpid()}\)"):
            take_netns_lock(str(tmp_path))
    finally:
        first.close()
    assert os.listdir(tmp_path) == [], "the lock file goes with its holder"
    again = take_netns_lock(str(tmp_path))
    again.close()


def test_a_lock_dir_owned_by_someone_else_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    os.chown(tmp_path, 65534, 65534)
    with pytest.raises(StartupError, match="not owned"):
        take_netns_lock(str(tmp_path))

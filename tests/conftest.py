"""Fixtures shared by the test modules: the fake engine, xend-vnet's XML-RPC
server in this process, and the data path the end-to-end tests run on.

End-to-end modules of the data path build their world on the fixture
``data_path``: each of their tests runs once with the engines on the
kernel path and once with ``--no-kernel-path`` (netns.Lab's ``data_path``).
A test of a user-space feature marked ``user_space_path`` runs only with
``--no-kernel-path``.  After each test of such a module every engine its
labs still run must report, in ``(engine.status)``, each of its vnets on
that data path (VXLAN vnets aside): a kernel-path test that ran in user
space fails.
"""

from __future__ import annotations

import pytest
from e2e_helpers import on_data_path, vnet_paths
from fake_engine import FakeEngine
from netns import KERNEL, USER, Lab
from vnet_server_harness import Harness

DATA_PATHS = (KERNEL, USER)
VXLAN_PATH = "kernel VXLAN"


@pytest.fixture
def engine(tmp_path):
    """A started FakeEngine (fake_engine.py) with no vnets, on a socket in tmp_path."""
    fake = FakeEngine(str(tmp_path / "vnetd.sock")).start()
    yield fake
    fake.close()


@pytest.fixture
def server(monkeypatch):
    """xend-vnet's server over a fake engine (vnet_server_harness.py), the one
    ``xm`` reaches through XM_SERVER."""
    h = Harness()
    monkeypatch.setenv("XM_SERVER", f"httpu://{h.sock}")
    yield h
    h.close()


@pytest.fixture(scope="module", params=DATA_PATHS)
def data_path(request) -> str:
    """The data path of a module's engines: ``kernel`` or ``user``."""
    return request.param


@pytest.fixture(autouse=True)
def _engines_stay_on_their_data_path(request):
    yield
    if "data_path" not in request.fixturenames:
        return
    wanted = request.getfixturevalue("data_path")
    wrong = []
    for lab in Lab.open_labs:
        if lab.data_path != wanted:
            continue
        for d in lab.daemons:
            if not d.alive():
                continue
            for vid, path in vnet_paths(d).items():
                if not path.startswith(VXLAN_PATH) and not on_data_path(path, wanted):
                    wrong.append(f"{d.ns}: vnet {vid} on {path!r}")
    assert not wrong, f"engines not on the {wanted} data path: " + "; ".join(wrong)


def pytest_collection_modifyitems(config, items):
    """A ``user_space_path`` test does not run on the kernel path."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_kernel = callspec is not None and callspec.params.get("data_path") == KERNEL
        (dropped if on_kernel and item.get_closest_marker("user_space_path") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept

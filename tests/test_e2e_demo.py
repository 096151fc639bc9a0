"""The README's first command, `make demo`, as a test (root).

It runs demo/run-demo.sh exactly as `make demo` does, with this test's
namespace prefix and run directory, and checks what every step shows, not
just the exit status: two emulated Xen hosts with vnetd and xend-vnet each
(per-host paths), `xm vnet-create vnet97.sxp`, two domains attached by a
vif-bridge-style hotplug to bridge vnet97, pings across hosts, the MACs
learned, a migration each way, the listings, the delete, and the cleanup.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest
from netns import REPO, namespaces, remove_namespaces, sh

pytestmark = pytest.mark.root

PREFIX = "xv6-demo"
DEMO = os.path.join(REPO, "demo", "run-demo.sh")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_demo(run_dir: str) -> subprocess.CompletedProcess:
    for tool in ("xm", "vn", "vnetd", "xend-vnet"):
        assert shutil.which(tool), f"{tool} is not installed: run `make setup` first"
    env = dict(os.environ, XEND_VNET_DEMO_PREFIX=PREFIX, XEND_VNET_DEMO_RUN=run_dir)
    env.pop("VNETD_SOCKET", None)
    env.pop("XM_SERVER", None)
    done = subprocess.run(["bash", DEMO], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    done.stdout = ANSI.sub("", done.stdout)
    return done


def steps(output: str) -> dict[str, str]:
    """The demo's output cut at its numbered headings: {"1": text, ...}."""
    parts = re.split(r"^(\d+)\. .*$|^Cleaning up$", output, flags=re.M)
    out = {}
    # re.split keeps the number groups: [before, n1, text1, n2, text2, ..., None, cleanup]
    for i in range(1, len(parts) - 1, 2):
        out[parts[i] or "cleanup"] = parts[i + 1]
    return out


def command_output(text: str, prompt: str) -> str:
    """The indented output of the first command shown as ``prompt`` in ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == prompt)
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        out.append(line[4:])
    return "\n".join(out)


def ventries(listing: str) -> list[dict[str, str]]:
    return [dict(re.findall(r"\((\w+) ([^()\s]+)\)", block))
            for block in listing.split("(ventry")[1:]]


def remove_leftovers() -> None:
    """What a demo that was itself killed left: its daemons, then its namespaces."""
    for ns in namespaces():
        if ns.startswith(PREFIX):
            pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:      # only the demo's processes live in its namespaces
                sh(["kill", pid], check=False)
    remove_namespaces(PREFIX)


@pytest.fixture
def run_dir():
    remove_leftovers()
    d = tempfile.mkdtemp(prefix="xv6-demo-")
    run = os.path.join(d, "run")
    yield run
    remove_leftovers()
    shutil.rmtree(d, ignore_errors=True)


def test_the_demo_scenario(run_dir):
    done = run_demo(run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    s = steps(done.stdout)
    assert list(s) == ["1", "2", "3", "4", "5", "6", "7", "8", "cleanup"], list(s)

    # 2. Engine and server on each host, with per-host sockets.
    for host in ("hostA", "hostB"):
        assert f"[{host}]# env XEN_SCRIPT_DIR={run_dir}/{host} " in s["2"]
        assert f"--socket {run_dir}/{host}/xmlrpc.sock" in s["2"]
    status = command_output(s["2"], "[hostA]# vn status")
    assert status.startswith("running (pid")
    assert f"control {run_dir}/hostA/vnetd.sock" in status
    assert "address 192.0.2.1" in status
    assert "xend-vnet is running" in s["2"]

    # 3. xm vnet-create from vnet97.sxp: listed, bridged, stored.
    assert command_output(s["3"], "[hostA]# xm vnet-list") == "97"
    assert command_output(s["3"], "[hostA]# xm vnet-list -l") == (
        "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))")
    assert command_output(s["3"], "[hostA]# vn bridges") == "vnet97 : vnif97"
    assert "0000-0000-0000-0000-0000-0000-0000-0097.sxp" in s["3"]

    # 4. The hotplug script attaches the domains with nothing vnet-specific.
    assert "[hostA]# " + os.path.join(REPO, "demo", "vif-bridge") + " online vif1.0 vnet97" \
        in s["4"]
    assert "Error" not in s["4"] and "does not exist" not in s["4"]

    # 5. Ping across hosts; hostA learned dom1 locally and dom2 at hostB.
    assert "3 packets transmitted, 3 received, 0% packet loss" in s["5"]
    assert "(vmac aa:00:00:00:97:01)" in command_output(s["5"], "[hostA]# vn vifs")
    learned = ventries(command_output(s["5"], "[hostA]# vn varp"))
    dom2 = [e for e in learned if e.get("vmac") == "aa:00:00:00:97:02"]
    assert dom2 and dom2[0]["addr"] == "192.0.2.2"
    assert dom2[0]["vnet"] == "0000:0000:0000:0000:0000:0000:0000:0097"

    # 6. Migration: the vif leaves the old bridge, both domains stay reachable,
    # and hostB's cache follows dom2 to hostA.
    assert command_output(s["6"], "[hostB]# vn bridges") == "vnet97 : vnif97"
    assert "aa:00:00:00:97:02" not in command_output(s["6"], "[hostB]# vn vifs")
    pings = re.findall(r"(\d+) packets transmitted, (\d+) received", s["6"])
    assert len(pings) == 2 and all(int(got) > 0 for _sent, got in pings), pings
    moved = ventries(command_output(s["6"], "[hostB]# vn varp"))
    dom2 = [e for e in moved if e.get("vmac") == "aa:00:00:00:97:02"]
    assert dom2 and dom2[0]["addr"] == "192.0.2.1"

    # 7. Listings.
    vnets = command_output(s["7"], "[hostA]# vn vnets")
    assert "(id 0000:0000:0000:0000:0000:0000:0000:0097)" in vnets
    assert "(vnetif vnif97)" in vnets
    stats = command_output(s["7"], "[hostA]# vn stats")
    counters = {line.split()[0]: line.split()[1:] for line in stats.splitlines() if line.strip()}
    assert "vnif97" in counters["counter"]
    column = counters["counter"].index("vnif97")
    assert int(counters["rx_packets"][column]) > 0
    assert int(counters["learned"][column]) > 0

    # 8. Delete: refused while domains are attached, then forced; nothing is left.
    assert "Error: vnet 97 has domain interfaces attached to bridge vnet97: vif2.0" in s["8"]
    assert command_output(s["8"], "[hostA]# xm vnet-list") == ""
    assert command_output(s["8"], "[hostA]# vn bridges") == ""
    assert "Demo complete." in s["8"]

    # Cleanup: namespaces, processes and the run directory are gone.
    assert not [ns for ns in namespaces() if ns.startswith(PREFIX)]
    assert not os.path.exists(run_dir)
    assert run_dir not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                         text=True).stdout


def test_the_demo_cleans_up_after_a_failure(run_dir):
    # A run directory that cannot be made: step 1 fails after creating a namespace.
    blocker = os.path.dirname(run_dir)
    with open(os.path.join(blocker, "file"), "w"):
        pass
    done = run_demo(os.path.join(blocker, "file", "run"))
    assert done.returncode != 0
    assert "Cleaning up" in done.stdout
    assert not [ns for ns in namespaces() if ns.startswith(PREFIX)]

"""The engine's owner mark, played by the fake engine's scripted replies.

The engine marks a vnet added with ``(owner xend-vnet)`` and lists the mark
after the vnet's other fields (design.md 5).  Until the command layer has
it, ``mark_owners`` gives a ``FakeEngine`` that behaviour on top of its real
commands: ``vnet.add`` and ``vnet.del`` run as before and keep the set of
marked ids, ``vnet.list`` appends the mark.
"""

from __future__ import annotations

from fake_engine import FakeEngine

from xend_vnet import sxp
from xend_vnet.kernel_shim.control import commands
from xend_vnet.vnet_id import VnetId, VnetIdError

OWNER = ["owner", "xend-vnet"]


def _canonical(form) -> str | None:
    try:
        return VnetId.parse(str(sxp.child_value(form, "id", ""))).canonical
    except VnetIdError:
        return None


def mark_owners(engine: FakeEngine) -> set[str]:
    """Install the mark on ``engine``; return the (live) set of marked ids."""
    owned: set[str] = set()

    def run(form) -> str:
        # Called under the engine's lock: the host directly, never engine.execute.
        return commands.execute(engine.host, sxp.to_string(form))

    def add(form) -> str:
        reply = run(form)
        if not reply.lstrip().startswith("(err"):
            (owned.add if OWNER in form[1:] else owned.discard)(_canonical(form))
        return reply

    def delete(form) -> str:
        reply = run(form)
        if not reply.lstrip().startswith("(err"):
            owned.discard(_canonical(form))
        return reply

    def listing(form) -> str:
        forms = sxp.parse_all(run(form))
        for f in forms:
            if isinstance(f, list) and f[:1] == ["vnet"] and _canonical(f) in owned:
                f.append(list(OWNER))
        return "".join(sxp.to_string(f) + "\n" for f in forms)

    engine.replies.update({"vnet.add": add, "vnet.del": delete, "vnet.list": listing})
    return owned

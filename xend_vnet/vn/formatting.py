"""What ``vn`` prints: vnet lookups and order, the engine status and
counters (design.md 6), pure functions of the engine's replies."""

from __future__ import annotations

from .. import sxp
from ..vnet_id import VnetId, VnetIdError


def canonical_or_none(text: str) -> str | None:
    try:
        return VnetId.parse(text).canonical
    except VnetIdError:
        return None


def find_vnet(vnets: list[sxp.Sxpr], key: str) -> sxp.Sxpr | None:
    """The vnet named by ``key``: an id in any accepted form, or its vnetif."""
    wanted = canonical_or_none(key)
    for v in vnets:
        vid = sxp.child_value(v, "id")
        if vid == key or (wanted is not None and isinstance(vid, str)
                          and canonical_or_none(vid) == wanted):
            return v
    for v in vnets:
        if sxp.child_value(v, "vnetif") == key:
            return v
    return None


def sort_vnets(vnets: list[sxp.Sxpr]) -> list[sxp.Sxpr]:
    """Legacy order: by the id string."""
    return sorted(vnets, key=lambda v: str(sxp.child_value(v, "id", "")))


def format_uptime(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h03m``, ``5d02h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_JOINED_KEYS = ("group-joined", "group_joined", "joined")

_YES = ("yes", "true", "1", "joined")


def _count(form: sxp.Sxpr, name: str) -> int | None:
    found = sxp.child(form, name)
    if found is None:
        return None
    if len(found) == 2 and isinstance(found[1], str) and found[1].isdigit():
        return int(found[1])
    return len(found) - 1


def format_status(form: sxp.Sxpr) -> str:
    """``running (pid N, up 3m12s, group 224.10.0.1 joined, 4 vnets)`` and the
    other children of ``(engine.status ...)`` one per line."""
    summary = [f"pid {sxp.child_value(form, 'pid', '?')}"]
    uptime = sxp.child_value(form, "uptime")
    try:
        summary.append(f"up {format_uptime(float(uptime))}")
    except (TypeError, ValueError):
        pass
    joined = next((sxp.child_value(form, k) for k in _JOINED_KEYS
                   if sxp.child(form, k) is not None), None)
    group = sxp.child_value(form, "mcaddr", "")
    if joined is not None:
        state = "joined" if str(joined).lower() in _YES else "not joined"
        summary.append(f"group {group} {state}" if group else f"group {state}")
    vnets = _count(form, "vnets")
    if vnets is not None:
        summary.append(f"{vnets} vnet{'' if vnets == 1 else 's'}")
    lines = [f"running ({', '.join(summary)})"]
    shown = {"pid", "uptime", "vnets", "vnet-path", *_JOINED_KEYS}
    for c in sxp.children(form):
        if isinstance(c, list) and c and isinstance(c[0], str) and c[0] not in shown:
            lines.append("    " + " ".join(sxp.to_string(x) for x in c))
    lines += _vnet_paths(form)
    return "\n".join(lines) + "\n"


def _vnet_paths(form: sxp.Sxpr) -> list[str]:
    """``(vnet-path (id ..) (vnetif ..) (path ..))`` children as a table: which
    path carries each vnet and, in user space, why (design.md 1.1)."""
    rows = [(str(sxp.child_value(c, "vnetif", "?")), str(sxp.child_value(c, "path", "?")))
            for c in sxp.children(form)
            if isinstance(c, list) and c[:1] == ["vnet-path"]]
    if not rows:
        return []
    width = max(len(name) for name, _ in rows)
    return ["    vnet paths:"] + [f"      {name:<{width}}  {path}" for name, path in rows]


_STATS_ID_KEYS = ("id", "vnet")


def _stats_id(form: sxp.Sxpr) -> str | None:
    for key in _STATS_ID_KEYS:
        value = sxp.child_value(form, key)
        if isinstance(value, str):
            return value
    return None


def _stat_rows(form: sxp.Sxpr) -> list[tuple[str, str]]:
    """``(name N)`` children as rows; ``(name (reason N) ...)`` as ``name reason``."""
    rows = []
    for c in sxp.children(form):
        if not (isinstance(c, list) and c and isinstance(c[0], str)):
            continue
        if c[0] in _STATS_ID_KEYS or c[0] == "vnetif":
            continue
        if len(c) == 2 and isinstance(c[1], str):
            rows.append((c[0], c[1]))
            continue
        for sub in c[1:]:
            if isinstance(sub, list) and len(sub) == 2 and all(isinstance(x, str) for x in sub):
                rows.append((f"{c[0]} {sub[0]}", sub[1]))
    return rows


def _section(title: str, rows: list[tuple[str, str]]) -> str:
    """Counters that belong to no vnet (the engine's): one per line."""
    name_w = max([len(n) for n, _ in rows], default=0)
    value_w = max([len(v) for _, v in rows], default=0)
    return "".join([f"{title}:\n"] + [f"  {n:<{name_w}}  {v:>{value_w}}\n" for n, v in rows])


def format_stats(forms: list[sxp.Sxpr]) -> str:
    """The engine's counters, then one table with a row per counter (and per
    drop reason) and a column per vnet, named by its vnetif; a counter a vnet
    does not report is 0 (drop reasons are listed only once counted)."""
    sections = []
    columns: list[tuple[str, str, dict[str, str]]] = []
    row_names: list[str] = []
    for form in forms:
        if not (isinstance(form, list) and form and isinstance(form[0], str)):
            continue
        rows = _stat_rows(form)
        vid = _stats_id(form)
        if vid is None:
            sections.append(_section(form[0], rows))
            continue
        columns.append((str(sxp.child_value(form, "vnetif") or vid), vid, dict(rows)))
        row_names += [n for n, _ in rows if n not in row_names]
    if columns:
        first = max(len(n) for n in row_names + ["counter"])
        widths = [max([len(label)] + [len(v) for v in values.values()])
                  for label, _, values in columns]
        lines = [f"{'counter':<{first}}"
                 + "".join(f"  {label:>{w}}" for (label, _, _), w in zip(columns, widths))]
        for name in row_names:
            lines.append(f"{name:<{first}}" + "".join(
                f"  {values.get(name, '0'):>{w}}" for (_, _, values), w in zip(columns, widths)))
        lines.append("")
        lines += [f"{label}  {vid}" for label, vid, _ in columns]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def vxlan_vnets(vnets: list[sxp.Sxpr]) -> list[sxp.Sxpr]:
    """The ``(data-path vxlan)`` vnets of a ``(vnet.list)`` reply."""
    return [v for v in vnets if sxp.child_value(v, "data-path") == "vxlan"
            and isinstance(sxp.child_value(v, "vnetif"), str)]


def short_id(text: str) -> str:
    """A vnet id as an operator writes it (``64``), or as listed when it is long."""
    try:
        vid = VnetId.parse(text)
    except VnetIdError:
        return text
    return f"{vid.last_field:x}" if vid.short else vid.canonical


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def vxlan_summary(vnet: sxp.Sxpr, fdb) -> str:
    """One line of ``vn status`` for a vxlan vnet: its control plane and what
    that control plane has put in the device's forwarding table (``fdb``, a
    ``device.DeviceFdb``, or None when the device is not there)."""
    vid = short_id(str(sxp.child_value(vnet, "id")))
    ifname = sxp.child_value(vnet, "vnetif")
    plane = sxp.child_value(vnet, "control-plane", "multicast")
    where = (f"local {sxp.child_value(vnet, 'local')}" if plane == "evpn"
             else f"group {sxp.child_value(vnet, 'group')}")
    head = f"  vnet {vid} {ifname}: {plane} ({where})"
    if fdb is None:
        return f"{head}, no device\n"
    flood = sorted(set(fdb.flood) - {sxp.child_value(vnet, "group")})
    hosts = "host" if plane == "evpn" else "peer"
    floods = f"floods to {_plural(len(flood), hosts)}" + (f" ({' '.join(flood)})" if flood else "")
    stale = len(set(fdb.remote) & fdb.local)
    if plane == "evpn":
        macs = _plural(len(fdb.external - fdb.local), "remote MAC") + " from FRR"
    else:
        macs = _plural(len(fdb.remote), "remote MAC") + " learnt"
    return (f"{head}, {floods}, {macs}"
            + (f", {stale} stale (local now)" if stale else "") + "\n")


def fdb_form(vnet: sxp.Sxpr, fdb) -> sxp.Sxpr:
    """``vn fdb``: a vxlan vnet's forwarding table as one s-expression."""
    plane = sxp.child_value(vnet, "control-plane", "multicast")
    form: list = ["vxlan.fdb", ["id", sxp.child_value(vnet, "id")],
                  ["vnetif", sxp.child_value(vnet, "vnetif")], ["control-plane", plane]]
    if fdb is None:
        return form + [["device", "missing"]]
    form.append(["flood", *sorted(set(fdb.flood))])
    for mac in sorted(fdb.remote):
        entry = ["mac", mac, ["dst", fdb.remote[mac]]]
        if mac in fdb.external:
            entry.append(["external"])
        if mac in fdb.local:
            entry.append(["stale"])
        form.append(entry)
    return form

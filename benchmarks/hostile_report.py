"""The pure half of benchmarks/hostile.py: reading the engines' counters and
status, ping's output and CPU figures, and printing the result table.

Counters come from ``(vnet.stats)`` and ``(engine.status)`` (design.md 6):
every dropped datagram is counted under one reason, so what an attack
costs shows as the reasons that grew.
"""

from __future__ import annotations

import re
import statistics


def reported_tables(children: list) -> dict[str, list]:
    """``{table: [size, bound or None]}`` from the children of an
    ``(engine.status ...)`` reply, when it reports its tables as
    ``(tables (NAME SIZE [BOUND]) ...)`` or ``(tables (NAME (size N) (bound M)))``;
    empty when it does not (the benchmark then runs for its time)."""
    out: dict[str, list] = {}
    for c in children:
        if not (isinstance(c, list) and c[:1] == ["tables"]):
            continue
        for t in c[1:]:
            if not (isinstance(t, list) and t and isinstance(t[0], str)):
                continue
            named = {x[0]: x[1] for x in t[1:] if isinstance(x, list) and len(x) == 2}
            plain = [x for x in t[1:] if isinstance(x, str)]
            size = named.get("size", plain[0] if plain else None)
            bound = named.get("bound", plain[1] if len(plain) > 1 else None)
            if size is not None and str(size).isdigit():
                out[t[0]] = [int(size), int(bound) if str(bound).isdigit() else None]
    return out


def all_at_bound(tables: dict[str, list]) -> bool:
    """Whether every reported table is full (False when none is reported)."""
    return bool(tables) and all(b is not None and s >= b for s, b in tables.values())


def _reasons(prefix: str, form: list, out: dict[str, int]) -> None:
    for r in form[1:]:
        if isinstance(r, list) and len(r) == 2 and str(r[1]).isdigit():
            out[f"{prefix}{r[0]}"] = int(r[1])


def flat_counters(stats: list, status: list) -> dict[str, int]:
    """One engine's counters, flat: ``rx_dropped/REASON``, ``tap_dropped/REASON``,
    ``vnet 99/dropped/REASON``, ``io_dropped/REASON`` and the numeric fields,
    from the forms of ``(vnet.stats)`` and the children of ``(engine.status)``."""
    out: dict[str, int] = {}
    for form in stats:
        if not isinstance(form, list) or not form:
            continue
        prefix = ""
        if form[0] == "vnet_stats":
            vid = next((c[1] for c in form[1:] if isinstance(c, list) and c[:1] == ["vnet"]),
                       "?")
            prefix = f"vnet {str(vid).rsplit(':', 1)[-1].lstrip('0') or '0'}/"
        for c in form[1:]:
            if not (isinstance(c, list) and c):
                continue
            if len(c) == 2 and isinstance(c[1], str) and c[1].isdigit():
                out[prefix + c[0]] = int(c[1])
            elif c[0] in ("rx_dropped", "tap_dropped", "dropped"):
                _reasons(f"{prefix}{c[0]}/", c, out)
    for c in status:
        if isinstance(c, list) and c[:1] == ["io-dropped"]:
            _reasons("io_dropped/", c, out)
    return out


def is_drop(name: str) -> bool:
    return "dropped" in name or name in ("vfwd_window_full", "kernel/rcvbuf_errors")


def grown(before: dict[str, int], after: dict[str, int], drops_only: bool = True
          ) -> dict[str, int]:
    """The counters that grew, by how much, largest first."""
    out = {k: v - before.get(k, 0) for k, v in after.items()
           if v > before.get(k, 0) and (is_drop(k) or not drops_only)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


_RTT = re.compile(r"time=([\d.]+) ms")
_SENT = re.compile(r"(\d+) packets transmitted, (\d+) received")


def parse_ping(text: str) -> dict:
    """Loss in percent and the median round trip of the replies of ``ping``'s output."""
    rtts = [float(m) for m in _RTT.findall(text)]
    sent = _SENT.search(text)
    if sent is None:
        return {"sent": 0, "received": 0, "loss_percent": 100.0, "rtt_median_ms": None}
    n, got = int(sent.group(1)), int(sent.group(2))
    return {"sent": n, "received": got,
            "loss_percent": 100.0 * (n - got) / n if n else 100.0,
            "rtt_median_ms": statistics.median(rtts) if rtts else None}


def per_kpps(core_percent: float, rate: float) -> float | None:
    """Percent of one core per 1,000 packets a second."""
    return core_percent / (rate / 1000.0) if rate > 0 else None


def _num(x, fmt: str) -> str:
    """``x`` in ``fmt``, or a dash as wide."""
    return format(x, fmt) if x is not None else "-".rjust(int(fmt.split(".")[0]))


HEADER = (f"{'kind':<12} {'asked/s':>7} {'sent/s':>7} {'eng %':>6} {'eng%/k':>6} "
          f"{'host %':>6} {'host%/k':>7} {'RSS MiB before>after':>20} {'loss %':>6} {'RTT ms':>6} "
          f"{'TCP x':>5} {'status ms':>11}")


def row(name: str, r: dict) -> str:
    """One line of the table for a kind's result (or the baseline's)."""
    rss = "-"
    if r.get("rss_before_mib") is not None:
        rss = f"{r['rss_before_mib']:.1f}>{r['rss_after_mib']:.1f}"
    status = "-"
    if r.get("status_median_ms") is not None:
        status = f"{r['status_median_ms']:.0f}/{r['status_max_ms']:.0f}"
    return (f"{name:<12} {_num(r.get('asked_rate'), '7.0f')} "
            f"{_num(r.get('achieved_rate'), '7.0f')} "
            f"{_num(r.get('engine_cpu_percent'), '6.1f')} "
            f"{_num(r.get('engine_cpu_per_kpps'), '6.2f')} "
            f"{_num(r.get('host_cpu_percent'), '6.1f')} "
            f"{_num(r.get('host_cpu_per_kpps'), '7.2f')} {rss:>20} "
            f"{_num(r.get('loss_percent'), '6.1f')} {_num(r.get('rtt_median_ms'), '6.3f')} "
            f"{_num(r.get('tcp_ratio'), '5.2f')} {status:>11}")


def table(baseline: dict, kinds: dict, after: dict | None = None) -> str:
    """The result table: the unattacked baseline, one row per kind, the
    baseline again after the last kind when measured; then the drop
    counters each kind made grow (both engines together)."""
    lines = [HEADER, row("(baseline)", baseline)]
    lines += [row(name, r) for name, r in kinds.items()]
    if after:
        lines.append(row("(baseline 2)", after))
    lines.append("")
    lines.append("drop counters that grew (both engines; kernel/rcvbuf_errors: "
                 "UDP receive-buffer overflows of both hosts):")
    for name, r in kinds.items():
        drops = r.get("drops") or {}
        text = ", ".join(f"{k} +{v}" for k, v in list(drops.items())[:8]) or "none"
        if len(drops) > 8:
            text += f", and {len(drops) - 8} more"
        lines.append(f"  {name}: {text}")
    return "\n".join(lines)

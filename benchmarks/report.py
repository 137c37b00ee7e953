"""From a run's raw measurements to figures (medians, ratios, targets) and markdown.

The targets are those of this machine's issue: ratios are to direct nginx in the
same run, so they hold on any machine that is not too different; the absolute
latency and memory limits assume a 2-core machine like the one they were set on.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

Value = float | None
Check = Callable[["Figure"], bool | None]


def _get(record: Any, *path: str) -> Value:
    """``record[path[0]][path[1]]...`` as a number, or None if absent or failed."""
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return float(record) if isinstance(record, int | float) else None


def _median(values: list[Value]) -> Value:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Figure:
    label: str
    unit: str
    direct_rounds: list[Value]
    tunnel_rounds: list[Value]
    direct: Value
    tunnel: Value
    target: str = ""
    passed: bool | None = None  # None: not judged (smoke run, fallback tools, no data)
    show_ratio: bool = True

    @property
    def ratio(self) -> Value:
        if not self.show_ratio or self.direct in (None, 0) or self.tunnel is None:
            return None
        return self.tunnel / self.direct

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _worst_high(values: list[Value]) -> Value:
    return max((v for v in values if v is not None), default=None)


def _worst_low(values: list[Value]) -> Value:
    return min((v for v in values if v is not None), default=None)


def _total(values: list[Value]) -> Value:
    return sum(v for v in values if v is not None)


class _Figures:
    """Builds the figures of one result, in table order."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.rounds: list[dict[str, Any]] = result["rounds"]
        self.judged = result["mode"] == "full"
        self.out: list[Figure] = []

    def per_round(self, side: str, path: tuple[str, ...]) -> list[Value]:
        return [_get(r.get(side), *path) for r in self.rounds]

    def compare(
        self,
        label: str,
        unit: str,
        path: tuple[str, ...],
        *,
        target: str = "",
        check: Check | None = None,
        judge: bool = True,
        aggregate: Callable[[list[Value]], Value] = _median,
    ) -> None:
        """A figure measured on both paths."""
        d, t = self.per_round("direct", path), self.per_round("tunnel", path)
        self.add(Figure(label, unit, d, t, aggregate(d), aggregate(t), target), check, judge)

    def tunnel_only(
        self,
        label: str,
        unit: str,
        rounds: list[Value],
        value: Value,
        *,
        target: str = "",
        check: Check | None = None,
    ) -> None:
        blank: list[Value] = [None] * len(rounds)
        self.add(Figure(label, unit, blank, rounds, None, value, target, show_ratio=False), check)

    def add(self, figure: Figure, check: Check | None, judge: bool = True) -> None:
        if self.judged and judge and check:
            figure.passed = check(figure)
        self.out.append(figure)


def at_least_x_direct(limit: float) -> Check:
    return lambda f: None if f.ratio is None else f.ratio >= limit


def at_most(limit: float) -> Check:
    return lambda f: None if f.tunnel is None else f.tunnel <= limit


def figures(result: dict[str, Any]) -> list[Figure]:
    f = _Figures(result)
    if f.rounds:  # none with --only idle: no figure is made of no data
        _round_figures(f, result["setup"])
    _idle_figures(f, result)
    return f.out


def _round_figures(f: _Figures, setup: dict[str, Any]) -> None:
    wrk = setup["load_tool"] == "wrk"  # rates and latencies are only judged with wrk...
    nginx = setup["server_kind"] == "nginx"  # ...and ratios only against nginx
    ka, fresh = setup["keepalive_connections"], setup["fresh_connections"]
    f.compare(
        f"keep-alive req/s ({ka} conns)",
        "req/s",
        ("keepalive", "rps"),
        target=">= 0.28 x direct",
        check=at_least_x_direct(0.28),
        judge=wrk and nginx,
    )
    f.compare(
        "keep-alive latency p50",
        "ms",
        ("keepalive", "p50_ms"),
        target="<= 2 ms",
        check=at_most(2.0),
        judge=wrk,
    )
    f.compare(
        "keep-alive latency p99",
        "ms",
        ("keepalive", "p99_ms"),
        target="<= 5 ms",
        check=at_most(5.0),
        judge=wrk,
    )
    f.compare(
        f"fresh-connection req/s ({fresh} conns, Connection: close)",
        "req/s",
        ("fresh", "rps"),
        target=">= 0.5 x direct",
        check=at_least_x_direct(0.5),
        judge=wrk and nginx,
    )
    f.compare(
        "fresh-connection errors (all rounds)",
        "",
        ("fresh", "errors"),
        target="0",
        check=lambda g: None if None in g.tunnel_rounds else g.tunnel == 0,
        aggregate=_total,
    )
    burst, pool = setup["burst"], setup["burst_pool"]
    f.compare(
        f"burst: {burst} at once, --pool {pool}: 200 pong (worst round)",
        f"/{burst}",
        ("burst", "ok"),
        target=f"{burst}/{burst} every round",
        check=lambda g: all(v == burst for v in g.tunnel_rounds),
        aggregate=_worst_low,
    )
    f.compare(f"burst: {burst} at once, wall time", "s", ("burst", "wall_s"))
    f.compare(
        f"{setup['download_bytes'] >> 20} MiB download",
        "MB/s",
        ("download", "median_mb_s"),
        target=">= 0.4 x direct",
        check=at_least_x_direct(0.4),
        judge=nginx,
    )

    peaks = {role: f.per_round("tunnel", ("peak_rss_mib", role)) for role in ROLES}
    both = [None if g is None or c is None else g + c for g, c in zip(*peaks.values(), strict=True)]
    f.tunnel_only(
        "peak RSS, gateway + client (worst round)",
        "MiB",
        both,
        _worst_high(both),
        target="<= 80 MiB",
        check=at_most(80),
    )
    for role, values in peaks.items():
        f.tunnel_only(f"peak RSS, {role}", "MiB", values, _worst_high(values))
    for phase, label in (("keepalive", "keep-alive"), ("fresh", "fresh-connection")):
        for role in ROLES:
            values = f.per_round("tunnel", (phase, "cpu_s_per_10k", role))
            f.tunnel_only(
                f"CPU s per 10 000 {label} requests, {role}", "s", values, _median(values)
            )


def _idle_figures(f: _Figures, result: dict[str, Any]) -> None:
    setup = result["setup"]
    idle = result.get("idle_pool", {})
    for size in setup["idle_pools"]:
        per_conn = _get(idle.get(str(size)), "kib_per_connection", "total")
        f.tunnel_only(
            f"RSS per idle pooled connection, pool {size:,} (gateway + client)",
            "KiB",
            [],
            per_conn,
            target="<= 16 KiB",
            check=at_most(16),
        )
    biggest = max(setup["idle_pools"])
    entry = idle.get(str(biggest))
    held = entry.get("held") if isinstance(entry, dict) else None
    f.tunnel_only(
        f"{biggest:,} idle pooled connections held",
        "yes/no",
        [],
        None if held is None else float(held),
        target="held without error",
        check=lambda g: g.tunnel == 1.0,
    )


ROLES = ("gateway", "client")


def add_derived(result: dict[str, Any]) -> None:
    """Per-round peak RSS in MiB, which the figures read like any other measurement."""
    for r in result["rounds"]:
        tunnel = r.get("tunnel", {})
        if tunnel.get("peak_rss_kib"):
            tunnel["peak_rss_mib"] = {k: v / 1024 for k, v in tunnel["peak_rss_kib"].items()}


# -- markdown ---------------------------------------------------------------------------


def _fmt(value: Value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "":
        return f"{value:g}"
    if unit.startswith("/"):
        return f"{value:.0f}{unit}"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) >= 0.1 else f"{value:.3f} {unit}"


def _verdict(figure: Figure, judged: bool) -> str:
    if not figure.target:
        return ""
    if not judged:
        return "(smoke: not judged)"
    return {True: "PASS", False: "**FAIL**", None: "n/a"}[figure.passed]


def _conntrack_warning(drops: int | None) -> list[str]:
    """A line for the report when the kernel dropped packets for want of room to track them."""
    if not drops:
        return []
    return [
        f"- **the kernel's connection tracking dropped {drops:,} packets during this run** "
        "(its table was full: `nf_conntrack_max`); a round may read far too low"
    ]


def markdown(result: dict[str, Any], figs: list[Figure]) -> str:
    m, s = result["machine"], result["setup"]
    judged = result["mode"] == "full"
    title = "revgw benchmark" + ("" if judged else " (smoke run: tiny sizes, not judged)")
    memory = f", {m['memory_mib'] / 1024:.0f} GiB RAM" if m.get("memory_mib") else ""
    reproduce = "`make bench` (or `PYTHONPATH=build/compiled .venv/bin/python -m benchmarks`)"
    if s.get("only"):
        reproduce = f"`PYTHONPATH=build/compiled .venv/bin/python -m benchmarks --only {s['only']}`"
    lines = [
        f"### {title}: {result['date']}",
        "",
        f"- machine: {m['cores']} cores ({m['cpu']}){memory}, Linux {m['kernel']}, "
        f"Python {m['python']}, event loop {m['loop']}, "
        f"revgw {m['revgw_commit']}, {m.get('revgw_build', 'build not recorded')}; "
        f"load average {m['load_average_1min_at_start']:.2f} at start",
        f"- private server: {s['server']} on loopback; load: {s['load']}",
        *_conntrack_warning(m.get("conntrack_drops")),
        (
            f"- {s['rounds']} round{'s' if s['rounds'] > 1 else ''}, each direct then tunnel; "
            f"{s['duration_s']:g} s per load run; figures are medians of the rounds unless marked"
            if s["rounds"]
            else "- idle pools only (`--only idle`): no request rounds"
        ),
        f"- reproduce: {reproduce}; this run took {result['elapsed_s'] / 60:.1f} min",
        "",
        "| figure | direct | tunnel | tunnel / direct | target | |",
        "|---|---:|---:|---:|---|---|",
    ]
    for f in figs:
        if f.unit == "yes/no":
            tunnel = {None: "—", 1.0: "yes", 0.0: "no"}[f.tunnel]
        else:
            tunnel = _fmt(f.tunnel, f.unit)
        ratio = "—" if f.ratio is None else f"{f.ratio:.2f}"
        direct = _fmt(f.direct, f.unit) if f.show_ratio else "—"
        lines.append(
            f"| {f.label} | {direct} | {tunnel} | {ratio} | {f.target} | {_verdict(f, judged)} |"
        )
    if result["rounds"]:
        lines += ["", *_rounds_table(result)]
    lines += ["", *_idle_table(result)]
    if result["notes"]:
        lines += ["", "Notes:", *(f"- {note}" for note in result["notes"])]
    if result["errors"]:
        lines += ["", "Not measured (errors):", *(f"- {e}" for e in result["errors"])]
    return "\n".join(lines) + "\n"


def _rounds_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "Per round:",
        "",
        "| round | path | keep-alive req/s | p50 | p99 | fresh req/s | fresh errors "
        "| burst 200 | burst wall | download | peak RSS gw + client |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rounds"]:
        for side in ("direct", "tunnel"):
            rec = r.get(side, {})
            peak = rec.get("peak_rss_kib")
            cells = [
                _fmt(_get(rec, "keepalive", "rps"), "req/s"),
                _fmt(_get(rec, "keepalive", "p50_ms"), "ms"),
                _fmt(_get(rec, "keepalive", "p99_ms"), "ms"),
                _fmt(_get(rec, "fresh", "rps"), "req/s"),
                _fmt(_get(rec, "fresh", "errors"), ""),
                _fmt(_get(rec, "burst", "ok"), f"/{result['setup']['burst']}"),
                _fmt(_get(rec, "burst", "wall_s"), "s"),
                _fmt(_get(rec, "download", "median_mb_s"), "MB/s"),
                _fmt(sum(peak.values()) / 1024, "MiB") if peak else "—",
            ]
            lines.append(f"| {r['round']} | {side} | " + " | ".join(cells) + " |")
    return lines


def _idle_table(result: dict[str, Any]) -> list[str]:
    idle = result.get("idle_pool", {})
    base = idle.get("baseline_pool_1_rss_kib")
    lines = [
        "Idle pooled connections (fresh gateway + client per pool size; RSS growth over "
        "the same pair with --pool 1"
        + (
            f": gateway {base['gateway'] / 1024:.1f} MiB, client {base['client'] / 1024:.1f} MiB"
            if base
            else ""
        )
        + "):",
        "",
        "| pool | time to fill | gateway RSS | client RSS | KiB per connection (gateway / client "
        "/ total) | held | lines logged |",
        "|---:|---:|---:|---:|---|---|---:|",
    ]
    for size in result["setup"]["idle_pools"]:
        e = idle.get(str(size), {})
        if "rss_kib" not in e:
            lines.append(f"| {size:,} | {e.get('error', 'not measured')} | | | | | |")
            continue
        per = e["kib_per_connection"]
        lines.append(
            f"| {size:,} | {e['fill_s']:.1f} s | {e['rss_kib']['gateway'] / 1024:.1f} MiB "
            f"| {e['rss_kib']['client'] / 1024:.1f} MiB "
            f"| {per['gateway']:.1f} / {per['client']:.1f} / {per['total']:.1f} "
            f"| {'yes' if e['held'] else 'no'} ({e['established_min']:,}-"
            f"{e['established_max']:,} established, {e['live_min']:,}-"
            f"{e['live_max']:,} authenticated over {e['hold_s']:g} s) "
            f"| {e['log_lines']} |"
        )
    lines += [
        "",
        "The peak-RSS target covers the request rounds (one gateway + client pair per round);"
        " the idle-pool pairs are reported on their own.",
    ]
    return lines

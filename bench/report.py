"""Results of the peer benchmarks: ``suite.json``, ``summary.md`` and the plots.

Every figure is the median of the valid runs of one invocation, with the lowest and highest
run beside it; every ratio compares medians of the same invocation, where the machine's state
was shared by both sides.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _harness as h
from bench import suite

PLOTS = ("s1", "s3", "s4", "s5")
TARGETS = {
    "s1_vs_socketio": 1.0,
    "s1_vs_floor": 1.15,
    "s1_vs_pysio": 0.25,
    "s2_vs_s1": 1.3,
    "s3_p99_ms": 20.0,
    "s4_vs_socketio": 1.0,
    "s5_back_95_s": 5.0,
}


def kind(key: str) -> str:
    """The scenario a key runs: ``s1-1000-1`` is scenario 1, ``s2-rooms`` a scenario of its
    own (scenario 2's rooms on every peer)."""
    return key if key == "s2-rooms" else key.split("-")[0]


def machine() -> dict[str, Any]:
    info = h.machine_info()
    for package in ("python-socketio", "aiohttp", "uvloop", "redis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    for package in ("socket.io", "ws"):
        path = suite.NODE_DIR / "node_modules" / package / "package.json"
        with contextlib.suppress(OSError, ValueError):
            info[package] = json.loads(path.read_text())["version"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if shutil.which("redis-server"):
            out = subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True, check=True
            ).stdout
            info["redis-server"] = next(
                (w.split("=")[1] for w in out.split() if w.startswith("v=")), out.strip()
            )
    return info


def one_line(scenario: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return "FAILED " + r["error"]
    mark = "" if r.get("valid") else "  (INVALID)"
    if scenario == "s1":
        return (
            f"{r['cpu_s_per_million']:8.2f} s CPU / 1M deliveries, "
            f"{r['deliveries_per_s']:,} deliveries/s, load {r['load_util']:.2f}, "
            f"server {r.get('server_util', float('nan')):.2f}{mark}"
        )
    if scenario in ("s2", "s2-rooms", "s3"):
        lat = r["latency_ms"]
        return (
            f"p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} p99.9 {lat['p99.9']:.2f} ms, "
            f"{r['cpu_s_per_million']} s CPU / 1M, {r['publishes_per_s']}/s, "
            f"cross-tenant {_fmt(r['cross_tenant'])}, "
            f"{r['delivered_total']}/{r['expected_deliveries']}, "
            f"lost connections {r.get('connections_lost', 0)}"
            f"{mark}"
        )
    if scenario == "s4":
        return (
            f"{r['kib_per_connection']:.2f} KiB/connection, {r['accepted_per_s']:,} accepted/s"
            f"{mark}"
        )
    return (
        f"95% back {r['back_95_s']} s, 100% {r['back_100_s']} s, delivered "
        f"{r['delivered_fraction']}, duplicates {r['duplicates_after_dedup']}{mark}"
    )


# --- figures -----------------------------------------------------------------------------------

FIGURES: dict[str, dict[str, Any]] = {
    "s1": {"cpu_s_per_million": "CPU s / 1M deliveries", "deliveries_per_s": "deliveries/s"},
    "s2": {
        "cpu_s_per_million": "CPU s / 1M deliveries",
        "latency_ms.p50": "p50 ms",
        "latency_ms.p99": "p99 ms",
        "latency_ms.p99.9": "p99.9 ms",
        "cross_tenant": "cross-tenant deliveries",
    },
    "s2-rooms": {
        "cpu_s_per_million": "CPU s / 1M deliveries",
        "latency_ms.p50": "p50 ms",
        "latency_ms.p99": "p99 ms",
        "latency_ms.p99.9": "p99.9 ms",
        "deliveries_per_s": "deliveries/s",
        "cross_tenant": "cross-tenant deliveries",
    },
    "s3": {
        "latency_ms.p50": "p50 ms",
        "latency_ms.p99": "p99 ms",
        "latency_ms.p99.9": "p99.9 ms",
        "server_cpu_share": "server CPU (cores)",
    },
    "s4": {"kib_per_connection": "KiB / connection", "accepted_per_s": "connections/s"},
    "s5": {
        "back_95_s": "95% back (s)",
        "back_100_s": "100% back (s)",
        "delivered_fraction": "delivered",
        "duplicates_after_dedup": "duplicates",
    },
}


def _get(run: dict[str, Any], path: str) -> Any:
    if path in run:
        return run[path]
    head, _, rest = path.partition(".")
    value = run.get(head)
    return value.get(rest) if isinstance(value, dict) else None


def figures(data: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario key -> peer -> figure -> {median, min, max, valid_runs}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, scenario in data["scenarios"].items():
        out[key] = {
            peer: {
                path: suite.summarise(runs, lambda r, p=path: _get(r, p))
                for path in FIGURES[kind(key)]
            }
            | {"runs": {"total": len(runs)}}
            for peer, runs in scenario["peers"].items()
        }
    return out


def _median(figs: dict[str, Any], key: str, peer: str, path: str) -> float | None:
    value = figs.get(key, {}).get(peer, {}).get(path, {}).get("median")
    return None if value is None else float(value)


COMPARED = {"s1": "cpu_s_per_million", "s2-rooms": "cpu_s_per_million", "s4": "kib_per_connection"}
"""The figure compared across peers, per scenario."""


def ratios(data: dict[str, Any], figs: dict[str, Any]) -> dict[str, float]:
    """Unisock's figure over each peer's (``"KEY unisock/PEER"``), and one scenario's CPU per
    delivery over another's for each peer that ran both (``"TOP/BASE PEER"``), within this run:
    scenario 2 and its rooms over scenario 1, and scenario 2 over its rooms."""
    out: dict[str, float] = {}
    for key in figs:
        path = COMPARED.get(kind(key))
        if path is None:
            continue
        mine = _median(figs, key, "unisock", path)
        for peer in figs[key]:
            theirs = _median(figs, key, peer, path)
            if mine and theirs and peer != "unisock":
                out[f"{key} unisock/{peer}"] = round(mine / theirs, 3)
    s1 = _first_s1(figs)
    if s1:
        for top in ("s2", "s2-rooms"):
            for base in (s1, f"{s1}-1"):
                out |= _cpu_over(figs, top, base)
    out |= _cpu_over(figs, "s2", "s2-rooms")
    return out


def _first_s1(figs: dict[str, Any]) -> str | None:
    """Scenario 1's key that the other scenarios are compared with: 1,000 subscribers where
    measured. It names the batched runs (``s1-N``); ``s1-N-1`` holds the one-in-flight ones,
    which a run may have measured alone."""
    sizes = [key.split("-")[1] for key in figs if key.startswith("s1-")]
    if not sizes:
        return None
    return "s1-1000" if "1000" in sizes else f"s1-{sizes[0]}"


def _cpu_over(figs: dict[str, Any], top: str, base: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for peer in figs.get(top, {}):
        a = _median(figs, top, peer, "cpu_s_per_million")
        b = _median(figs, base, peer, "cpu_s_per_million")
        if a and b:
            out[f"{top}/{base} {peer}"] = round(a / b, 3)
    return out


def _rests_on_invalid_runs(figs: dict[str, Any], key: str) -> bool:
    """Whether a ratio ``"SCENARIO unisock/PEER"`` has a side with no valid run (its median is
    then taken over every run, a saturated load generator's included)."""
    scenario, _, pair = key.partition(" ")
    if "/" not in pair or scenario not in figs:
        return False
    for peer in pair.split("/"):
        cells = figs[scenario].get(peer, {})
        first = next((c for name, c in cells.items() if name != "runs"), None)
        if first is not None and first.get("valid_runs") == 0:
            return True
    return False


def targets(figs: dict[str, Any], rat: dict[str, float]) -> list[tuple[str, str, Any, bool | None]]:
    """(target, bound, measured, met) for every target of the issue this run can judge."""
    s1 = _first_s1(figs)
    rows: list[tuple[str, str, Any, bool | None]] = []

    def ratio_row(label: str, key: str, bound: float) -> None:
        value = rat.get(key)
        if _rests_on_invalid_runs(figs, key):
            label += " (from invalid runs only: see the valid-runs column)"
        rows.append((label, f"<= {bound}x", value, None if value is None else value <= bound))

    if s1 is not None and s1 in figs:
        ratio_row(
            f"S1 ({s1[3:]} subscribers) CPU/delivery vs socket.io",
            f"{s1} unisock/socketio",
            TARGETS["s1_vs_socketio"],
        )
        ratio_row(
            f"S1 ({s1[3:]} subscribers) CPU/delivery vs floor",
            f"{s1} unisock/floor",
            TARGETS["s1_vs_floor"],
        )
        ratio_row(
            f"S1 ({s1[3:]} subscribers) CPU/delivery vs python-socketio",
            f"{s1} unisock/pysio",
            TARGETS["s1_vs_pysio"],
        )
    if s1 is not None:
        ratio_row("S2 CPU/delivery vs S1 (unisock)", f"s2/{s1} unisock", TARGETS["s2_vs_s1"])
        ratio_row(
            "S2 CPU/delivery vs S1 with one event in flight (unisock)",
            f"s2/{s1}-1 unisock",
            TARGETS["s2_vs_s1"],
        )
        single = f"{s1}-1"
        if single in figs:
            for peer, bound in (("socketio", TARGETS["s1_vs_socketio"]), ("floor", 1.15)):
                ratio_row(
                    f"S1 ({s1[3:]} subscribers, one event in flight) vs {peer}",
                    f"{single} unisock/{peer}",
                    bound,
                )
    p99 = _median(figs, "s3", "unisock", "latency_ms.p99")
    rows.append(
        ("S3 p99 (unisock)", "< 20 ms", p99, None if p99 is None else p99 < TARGETS["s3_p99_ms"])
    )
    if "s4" in figs:
        ratio_row(
            "S4 memory per idle connection vs socket.io",
            "s4 unisock/socketio",
            TARGETS["s4_vs_socketio"],
        )
    if "s5" in figs:
        back = _median(figs, "s5", "unisock", "back_95_s")
        rows.append(
            ("S5 95% back (unisock)", "<= 5 s", back, None if back is None else back <= 5.0)
        )
        frac = _median(figs, "s5", "unisock", "delivered_fraction")
        rows.append(("S5 delivered (unisock)", "100%", frac, None if frac is None else frac == 1.0))
        dups = _median(figs, "s5", "unisock", "duplicates_after_dedup")
        rows.append(("S5 duplicates (unisock)", "0", dups, None if dups is None else dups == 0))
    return rows  # fmt: skip


# --- the Markdown summary ----------------------------------------------------------------------

TITLES = {
    "s1": "Scenario 1: fan-out, one room, {n} subscribers, {b}-byte events",
    "s2": "Scenario 2: multi-tenant filtered fan-out ({c} connections, 3 subscriptions each, "
    "20% filtered, {r} schema-validated publishes/s)",
    "s2-rooms": "Scenario 2's rooms, every peer ({c} connections in 3 rooms each, no filters, "
    "{r} untyped publishes/s round-robin over the rooms)",
    "s3": "Scenario 3: latency under load ({n} subscribers, {r} events/s)",
    "s4": "Scenario 4: idle capacity ({n} connections, 2 subscriptions each)",
    "s5": "Scenario 5: reconnect storm ({n} subscribers on {c} channels, {r} publishes/s, every "
    "connection dropped at once)",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _repeats(data: dict[str, Any]) -> str:
    counts = {
        key: s.get("repeat", data["parameters"]["repeat"]) for key, s in data["scenarios"].items()
    }
    if len(set(counts.values())) <= 1:
        count = next(iter(counts.values()), data["parameters"]["repeat"])
        return f"{count} interleaved repeat(s) per peer"
    return "interleaved repeats per peer: " + ", ".join(f"{k} {v}" for k, v in counts.items())


BUSY_SHARE = 0.10
"""Share of the machine other programs may take during runs before figures are marked."""


def _while_server_idled(data: dict[str, Any]) -> str:
    """Scenario 1's rule since runs record the server's own share of its core."""
    runs = [
        r
        for key, scenario in data["scenarios"].items()
        if kind(key) == "s1"
        for peer_runs in scenario["peers"].values()
        for r in peer_runs
    ]
    if not any("server_util" in r for r in runs):
        return ""
    return (
        f", in scenario 1 only while the server used less than {suite.SATURATED:.0%} of its "
        "own (a server that kept its core busy set the pace itself)"
    )


def _load_loop(data: dict[str, Any]) -> str:
    """Results from before the option name no loop: their generators ran on asyncio's."""
    return f", on {data.get('load_loop', 'asyncio')}"


def _other_work(data: dict[str, Any], loads: list[float], machine: dict[str, Any]) -> str:
    """How busy the machine was with work outside the benchmark while it measured.

    Measured per run (busy time of the machine minus the benchmark's own processes); older
    results have only the load average, which counts the benchmark's own processes too.
    """
    shares = data.get("other_work") or []
    if shares:
        worst = max(shares)
        said = f"; other programs used at most {worst:.0%} of the machine during a run"
        if worst > BUSY_SHARE:
            return said + ", so the figures are indicative only."
        return said + " (a quiet machine)."
    if loads and max(loads) > machine.get("cpu_count", 1):
        return " — the machine was busy with other work, so the figures are indicative only."
    return " (a quiet machine)."


def _speed(data: dict[str, Any]) -> str:
    """How fast the machine ran: the speed probe's range over the runs (older results: none)."""
    probes = data.get("speed_probe_ms") or []
    if not probes:
        return ""
    return (
        f" A fixed pure-Python loop ({h.SPEED_PROBE_STEPS:,} multiply-adds) took "
        f"{min(probes):.0f} to {max(probes):.0f} ms before the runs: compare it before comparing "
        "absolute figures of two invocations, since a host that gives this machine less CPU "
        "slows every peer without showing in the load figures."
    )


OVER = (
    ("s2/s1", "Scenario 2 over scenario 1, CPU per delivery"),
    (
        "s2-rooms/s1",
        "Scenario 2's rooms over scenario 1, CPU per delivery, not a target (what many rooms, "
        "each delivery written alone, cost each peer)",
    ),
    (
        "s2/s2-rooms",
        "Scenario 2 over its rooms, CPU per delivery, not a target (what filters and typed "
        "events add to that shape)",
    ),
)
"""Ratio lines under the tables: keys of ``ratios`` starting with the prefix, and their label."""


def over_lines(rat: dict[str, float]) -> list[str]:
    """One line per ``OVER`` entry that this run has, each ratio named by its base and peer."""
    lines: list[str] = []
    for prefix, label in OVER:
        by_base: dict[str, list[str]] = {}
        for key, value in rat.items():
            pair, _, peer = key.partition(" ")
            if pair.startswith(prefix):
                by_base.setdefault(pair.split("/")[1], []).append(f"{peer} {value:.2f}x")
        if by_base:
            over = "; ".join(f"over `{b}`: " + ", ".join(v) for b, v in by_base.items())
            lines += [f"{label}: {over}.", ""]
    return lines


def markdown(data: dict[str, Any], figs: dict[str, Any], rat: dict[str, float]) -> str:
    m = data["machine"]
    p = data["parameters"]
    loads = [x for x in data.get("load_average", []) if x >= 0]
    versions = ", ".join(
        f"{name} {m[name]}"
        for name in ("python", "websockets", "unisock", "node", "socket.io", "ws",
                     "python-socketio", "aiohttp", "uvloop", "redis-server")
        if name in m
    )  # fmt: skip
    label = "" if data["size"] == "full" else f" — {data['size'].upper()} SIZE, NOT THE FULL RUN"
    lines = [
        f"# Peer benchmarks{label}",
        "",
        f"Measured {data['date']} on {m['cpu_model']} ({m['usable_cores']} cores; the server "
        f"pinned to core {data['server_cores']}, the load generators on {data['client_cores']}"
        f"{_load_loop(data)}). "
        f"Versions: {versions}. One-minute load average before the runs: "
        + (f"{min(loads):.2f} to {max(loads):.2f}" if loads else "n/a")
        + _other_work(data, loads, m)
        + _speed(data),
        "",
        f"Size `{data['size']}`, {_repeats(data)}; each cell is the "
        "median of the valid runs, with the lowest and highest in brackets. Server CPU is the "
        "server process's user + system time from `/proc`; a run is invalid when the load "
        f"generators used {suite.SATURATED:.0%} of their cores{_while_server_idled(data)} (or "
        "a paced publisher fell behind, or a delivery was missing). Ratios compare medians of "
        "this invocation.",
        "",
    ]
    for note in data.get("notes", []):  # what a reader of these figures must know besides
        lines += [note, ""]
    if data.get("truncated"):
        lines += [
            "Fewer repeats than planned, out of time: "
            + ", ".join(f"`{k}`" for k in data["truncated"])
            + ".",
            "",
        ]
    if data.get("not_run"):
        lines += [
            "Not run, out of time: " + ", ".join(f"`{k}`" for k in data["not_run"]) + ".",
            "",
        ]
    if data.get("skipped_peers"):
        lines += [
            "Not measured here: "
            + "; ".join(f"`{k}` ({v})" for k, v in data["skipped_peers"].items())
            + ".",
            "",
        ]
    lines += ["## Targets", "", "| target | bound | measured | met |", "|---|---|---:|---|"]
    for label_, bound, value, met in targets(figs, rat):
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {label_} | {bound} | {_fmt(value)} | {verdict} |")
    lines.append("")
    for key, peers in figs.items():
        scenario = kind(key)
        params = scenario[:2]  # s2-rooms runs with scenario 2's parameters
        n = key.split("-")[1] if scenario == "s1" else None
        title = TITLES[scenario].format(
            n=n or p.get(f"{params}_subscribers", p.get("s4_connections")),
            b=p["event_bytes"],
            c=p.get("s2_connections") if params == "s2" else p.get("s5_channels"),
            r=p.get(f"{params}_rate"),
        )
        if scenario == "s4":
            title = TITLES["s4"].format(n=p["s4_connections"])
        if scenario == "s1" and key.count("-") == 2:
            title += ", one event in flight at a time (nothing to batch)"
        elif scenario == "s1":
            title += ", up to 32 events in flight, injected 8 at a time"
        lines += [f"## {title}", ""]
        columns = FIGURES[scenario]
        lines.append("| peer | " + " | ".join(columns.values()) + " | valid runs |")
        lines.append("|---|" + "---:|" * len(columns) + "---|")
        for peer, cells in peers.items():
            row = [f"`{peer}`"]
            for path in columns:
                cell = cells[path]
                text = _fmt(cell["median"])
                if cell["min"] is not None and cell["min"] != cell["max"]:
                    text += f" [{_fmt(cell['min'])} to {_fmt(cell['max'])}]"
                row.append(text)
            valid = cells[next(iter(columns))]["valid_runs"]
            row.append(f"{valid}/{cells['runs']['total']}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        mine = {k: v for k, v in rat.items() if k.startswith(key + " ")}
        if mine:
            lines.append(
                "Unisock over each peer: "
                + ", ".join(f"{k.split(' ')[1].split('/')[1]} {v:.2f}x" for k, v in mine.items())
                + "."
            )
            lines.append("")
        if scenario in PLOTS and key in (f"s1-{p['s1_subscribers'][0]}", "s3", "s4", "s5"):
            lines += [f"![{title}]({scenario}.svg)", ""]
    lines += over_lines(rat)
    described = "; ".join(f"`{peer.name}`: {peer.what}" for peer in suite.peers().values())
    lines += [f"Peers: {described}.", ""]
    return "\n".join(lines)


# --- plots -------------------------------------------------------------------------------------


def plots(out: Path, data: dict[str, Any], figs: dict[str, Any]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[Path] = []

    def bars(name: str, key: str, paths: dict[str, str], ylabel: str, title: str) -> None:
        peers = figs.get(key)
        if not peers:
            return
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        names = list(peers)
        width = 0.8 / len(paths)
        for i, (path, label) in enumerate(paths.items()):
            med = [peers[n][path]["median"] or 0 for n in names]
            low = [
                max(0, m - (peers[n][path]["min"] or m)) for m, n in zip(med, names, strict=True)
            ]
            high = [
                max(0, (peers[n][path]["max"] or m) - m) for m, n in zip(med, names, strict=True)
            ]
            xs = [x + i * width for x in range(len(names))]
            ax.bar(xs, med, width, yerr=[low, high], capsize=3, label=label)
        ax.set_xticks([x + width * (len(paths) - 1) / 2 for x in range(len(names))], names)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if len(paths) > 1:
            ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        for ext in ("svg", "png"):
            path = out / f"{name}.{ext}"
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)

    p = data["parameters"]
    first = f"s1-{p['s1_subscribers'][0]}"
    bars(
        "s1",
        first,
        {"cpu_s_per_million": "CPU"},
        "server CPU s / 1M deliveries",
        f"Fan-out, {first[3:]} subscribers: server CPU per delivery (lower is better)",
    )
    bars(
        "s3",
        "s3",
        {"latency_ms.p50": "p50", "latency_ms.p99": "p99"},
        "ms",
        "Latency under load: publish to receive",
    )
    bars("s4", "s4", {"kib_per_connection": "KiB"}, "KiB / idle connection",
         "Idle capacity: server memory per connection")  # fmt: skip
    storm = data["scenarios"].get("s5")
    if storm:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        for peer, runs in storm["peers"].items():
            for i, run in enumerate(runs):
                curve = run.get("curve")
                if curve:
                    xs, ys = zip(*curve, strict=True)
                    ax.step(xs, ys, where="post", label=f"{peer} run {i + 1}", linewidth=1)
        ax.set_xlabel("seconds after every connection dropped")
        ax.set_ylabel("subscribers back (resumed)")
        ax.set_title("Reconnect storm: jittered backoff spreads the reconnects", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        for ext in ("svg", "png"):
            path = out / f"s5.{ext}"
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)
    return written


def write(out: Path, data: dict[str, Any]) -> None:
    figs = figures(data)
    rat = ratios(data, figs)
    data["figures"] = figs
    data["ratios"] = rat
    data["targets"] = [
        {"target": t, "bound": b, "measured": v, "met": m} for t, b, v, m in targets(figs, rat)
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    plots(out, data, figs)
    (out / "summary.md").write_text(markdown(data, figs, rat), encoding="utf-8")


# --- profiles ----------------------------------------------------------------------------------


def profile_top(collapsed: Path, top: int) -> str:
    """Self and inclusive sample shares per function, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = busy = idle = 0
    for line in collapsed.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        # One entry per function: "name (file:line)" loses its line number.
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";") if f.strip()]
        if not frames or frames[-1].startswith("EpollSelector.select"):
            idle += count  # waiting for the network: not CPU
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not busy:
        return "no samples\n"
    lines = [
        f"{total} samples, {idle} waiting in select (left out); shares of the {busy} others",
        "",
        "self %  function (file)",
    ]
    lines += [f"{100 * c / busy:6.2f}  {f}" for f, c in own.most_common(top)]
    lines += ["", "incl %  function (file)"]
    lines += [f"{100 * c / busy:6.2f}  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"

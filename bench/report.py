"""Medians, ratios and targets, and the three outputs: a rich table, latest.md, latest.json.

Ratios (issue 8): for each of enqueue, enqueue_bulk, drain, latency_p50, latency_p99 and
rss, the factor by which pluq on Redis beats the best peer on Redis, from the medians;
above 1 is better for pluq whichever way the raw figure points. enqueue_bulk is pluq's
bulk rate against the best peer's single-call enqueue, and rss is the drain's peak RSS.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "Metric",
    "aggregate",
    "ratios",
    "render_markdown",
    "render_table",
    "targets",
    "write",
]


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 0


METRICS: tuple[Metric, ...] = (
    Metric("enqueue", "enqueue", "tasks/s", True),
    Metric("enqueue_bulk", "enqueue bulk", "tasks/s", True),
    Metric("drain", "drain", "tasks/s", True),
    Metric("drain_rss_mb", "drain RSS", "MB", False, 1),
    Metric("latency_p50_ms", "latency p50", "ms", False, 2),
    Metric("latency_p99_ms", "latency p99", "ms", False, 2),
    Metric("sleep_s", "sleep 40x0.5", "s (ideal 10)", False, 2),
    Metric("delayed_late_s", "delayed: last late", "s", False, 3),
    Metric("delayed_rss_mb", "delayed RSS", "MB", False, 1),
)

CEILINGS: tuple[Metric, ...] = (
    Metric("redis_lpush_c50", "redis-benchmark LPUSH, 50 clients", "req/s", True),
    Metric("redis_rpop_c50", "redis-benchmark RPOP, 50 clients", "req/s", True),
    Metric("redis_lpush_c1", "redis-benchmark LPUSH, 1 client", "req/s", True),
    Metric("redis_rpop_c1", "redis-benchmark RPOP, 1 client", "req/s", True),
    Metric("redis_py_ping", "redis-py PING, one at a time", "req/s", True),
    Metric("sqlite_claims_normal", "SQLite claims, synchronous=NORMAL", "tx/s", True),
    Metric("sqlite_claims_full", "SQLite claims, synchronous=FULL", "tx/s", True),
)

PLUQ = "pluq-redis"
RATIOS: tuple[tuple[str, str, str], ...] = (
    # (ratio, pluq's figure, the peers' figure)
    ("enqueue", "enqueue", "enqueue"),
    ("enqueue_bulk", "enqueue_bulk", "enqueue"),
    ("drain", "drain", "drain"),
    ("latency_p50", "latency_p50_ms", "latency_p50_ms"),
    ("latency_p99", "latency_p99_ms", "latency_p99_ms"),
    ("rss", "drain_rss_mb", "drain_rss_mb"),
)
HIGHER = {m.key: m.higher_is_better for m in METRICS}


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def aggregate(runs: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per name, per figure: median, min, max and the values of every run that has one."""
    out: dict[str, dict[str, Any]] = {}
    for name, per_run in runs.items():
        keys = dict.fromkeys(k for figures in per_run for k in figures)
        out[name] = {k: summary([f[k] for f in per_run if k in f]) for k in keys}
    return out


def _peers_on_redis(figures: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [s for s in figures if s.endswith("-redis") and not s.startswith("pluq-")]


def ratios(
    figures: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, float | None], dict[str, str | None]]:
    """The six ratios of the issue, and the peer each was taken against."""
    values: dict[str, float | None] = {}
    basis: dict[str, str | None] = {}
    pluq = figures.get(PLUQ, {})
    for name, mine, theirs in RATIOS:
        candidates = [
            (figures[p][theirs]["median"], p)
            for p in _peers_on_redis(figures)
            if theirs in figures[p]
        ]
        if mine not in pluq or not candidates:
            values[name], basis[name] = None, None
            continue
        higher = HIGHER[theirs]
        best, peer = max(candidates) if higher else min(candidates)
        ours = pluq[mine]["median"]
        values[name] = ours / best if higher else best / ours
        basis[name] = peer
    return values, basis


def _median(figures: Mapping[str, Mapping[str, Any]], subject: str, key: str) -> float | None:
    value = figures.get(subject, {}).get(key)
    return None if value is None else float(value["median"])


def targets(
    figures: Mapping[str, Mapping[str, Any]],
    ratio: Mapping[str, float | None],
    ceilings: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether it is met."""

    def check(name: str, value: float | None, goal: str, met: bool | None) -> dict[str, Any]:
        # met is None when there is no figure, or when the figure is only reported.
        return {"target": name, "value": value, "goal": goal, "met": None if value is None else met}

    out = []
    for name, goal in (
        ("drain", 2.0),
        ("latency_p50", 2.0),
        ("rss", 1.0),
        ("enqueue", 0.9),
        ("enqueue_bulk", 5.0),
    ):
        value = ratio.get(name)
        out.append(check(f"ratio {name}", value, f">= {goal}", value is not None and value >= goal))
    sleep = _median(figures, PLUQ, "sleep_s")
    out.append(check("pluq-redis sleep (s)", sleep, "<= 10.5", sleep is not None and sleep <= 10.5))
    ours, huey = _median(figures, "pluq-sqlite", "drain"), _median(figures, "huey-sqlite", "drain")
    factor = ours / huey if ours is not None and huey else None
    out.append(
        check(
            "pluq-sqlite drain / huey-sqlite drain",
            factor,
            ">= 2.0",
            factor is not None and factor >= 2.0,
        )
    )
    ceiling = ceilings.get("sqlite_claims_normal", {}).get("median")
    fraction = ours / ceiling if ours is not None and ceiling else None
    out.append(check("pluq-sqlite drain / SQLite claim ceiling", fraction, "(reported)", None))
    memory = _median(figures, "pluq-memory", "drain")
    out.append(
        check(
            "pluq-memory drain (tasks/s)",
            memory,
            ">= 20000",
            memory is not None and memory >= 20_000,
        )
    )
    return out


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def cell(summary: Mapping[str, Any] | None, digits: int, *, runs: int) -> str:
    if summary is None:
        return "-"
    text = _fmt(summary["median"], digits)
    if runs > 1 and len(summary["runs"]) > 1:
        text += f" ({_fmt(summary['min'], digits)}-{_fmt(summary['max'], digits)})"
    return text


def render_table(doc: Mapping[str, Any]) -> Any:
    """The main table as a rich Table (subjects as rows, workloads as columns)."""
    from rich.table import Table

    runs = int(doc["runs"])
    table = Table(
        title=f"pluq bench: {doc['tasks']:,} tasks, median of {runs} run(s) (min-max)",
        show_lines=False,
    )
    table.add_column("subject", style="bold")
    for m in METRICS:
        table.add_column(f"{m.label}\n{m.unit}", justify="right")
    for subject, figures in doc["figures"].items():
        style = "cyan" if subject.startswith("pluq-") else None
        table.add_row(
            subject,
            *(cell(figures.get(m.key), m.digits, runs=runs) for m in METRICS),
            style=style,
        )
    return table


def render_ratio_table(doc: Mapping[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="pluq on Redis against the best peer on Redis (> 1: pluq is better)")
    table.add_column("ratio")
    table.add_column("value", justify="right")
    table.add_column("best peer")
    for name, value in doc["ratios"].items():
        table.add_row(name, _fmt(value, 2), doc["ratio_basis"].get(name) or "-")
    return table


def render_markdown(doc: Mapping[str, Any]) -> str:
    runs = int(doc["runs"])
    lines = [
        "# pluq bench: latest results",
        "",
        f"Generated {doc['generated_at']} by `python -m bench.run"
        f"{' --quick' if doc['mode'] == 'quick' else ''}`: {doc['tasks']:,} tasks, "
        f"median of {runs} run(s), (min-max) over the runs, interleaved A B A B.",
        "",
        "## Machine and versions",
        "",
    ]
    for key, value in {**doc["machine"], **doc["versions"]}.items():
        lines.append(f"- {key}: {value}")
    lines += ["", "## Figures", ""]
    header = ["subject"] + [f"{m.label} ({m.unit})" for m in METRICS]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" + "---:|" * len(METRICS))
    for subject, figures in doc["figures"].items():
        row = [subject] + [cell(figures.get(m.key), m.digits, runs=runs) for m in METRICS]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Ratios (pluq on Redis against the best peer on Redis; > 1 favours pluq)", ""]
    lines += ["| ratio | value | against |", "|---|---:|---|"]
    for name, value in doc["ratios"].items():
        lines.append(f"| {name} | {_fmt(value, 2)} | {doc['ratio_basis'].get(name) or '-'} |")
    lines += ["", "## Targets", "", "| target | value | goal | met |", "|---|---:|---|---|"]
    for t in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'], 2)} | {t['goal']} | {met} |")
    lines += ["", "## Ceilings", "", "| ceiling | value |", "|---|---:|"]
    for m in CEILINGS:
        value = doc["ceilings"].get(m.key)
        lines.append(f"| {m.label} ({m.unit}) | {cell(value, 0, runs=runs)} |")
    lines += ["", "## Details (medians)", ""]
    for subject, details in doc["details"].items():
        shown = ", ".join(f"{k}={_fmt(v['median'], 3)}" for k, v in details.items())
        lines.append(f"- {subject}: {shown}")
    lines += ["", "## Setups", ""]
    lines += [f"- {name}: {note}" for name, note in doc["notes"].items()]
    if doc["errors"]:
        lines += ["", "## Errors", ""]
        for error in doc["errors"]:
            first, *rest = str(error).splitlines()
            lines.append(f"- {first}")
            lines += [f"      {line}" for line in rest[:20]]
    lines.append("")
    return "\n".join(lines)


def write(doc: Mapping[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / "latest.md", directory / "latest.json"
    md.write_text(render_markdown(doc))
    js.write_text(json.dumps(doc, indent=2) + "\n")
    return md, js

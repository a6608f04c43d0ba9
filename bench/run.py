"""Run the benchmarks: pluq on every transport beside Celery, RQ, Huey and Dramatiq.

    python -m bench.run                 10,000 tasks, 3 runs (about half an hour)
    python -m bench.run --quick         1,000 tasks, 1 run, for development
    python -m bench.run --subjects pluq-redis,huey-redis --workloads enqueue,drain

Starts one throwaway redis-server on a free loopback port (never 6379), then for each run:
the ceilings (redis-benchmark, redis-py PING, SQLite claims), then one driver process per
subject, always in the same order, so that drift on a shared machine hits every library
alike (A B A B). Every worker a driver starts is the leader of its own session; after each
driver the session ids it recorded are checked and anything still alive is killed and
reported. Writes bench/results/latest.md and latest.json and prints a rich table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ceilings, report
from bench.adapters import NOTES, SUBJECTS
from bench.drive import REPO, WORKLOADS
from bench.procs import kill_session

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("pluq", "celery", "kombu", "rq", "huey", "dramatiq", "redis", "hiredis")
DRIVER_TIMEOUT = 3600.0


def machine() -> dict[str, Any]:
    def first(path: str, prefix: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        return "?"

    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "hostname": socket.gethostname(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis_server": redis_version,
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions() -> dict[str, str]:
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    out = {"pluq_commit": commit or "?"}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def measure_ceilings(port: int, url: str, *, quick: bool) -> dict[str, float]:
    scale = 5 if quick else 1
    out: dict[str, float] = {}
    for clients, requests in ((50, 100_000 // scale), (1, 20_000 // scale)):
        rates = ceilings.redis_benchmark(port, requests=requests, clients=clients)
        out[f"redis_lpush_c{clients}"] = rates["lpush"]
        out[f"redis_rpop_c{clients}"] = rates["rpop"]
    out["redis_py_ping"] = ceilings.redis_ping(url, count=20_000 // scale)
    tmp = Path(tempfile.gettempdir())
    out["sqlite_claims_normal"] = ceilings.sqlite_claims(
        tmp, claims=10_000 // scale, synchronous="NORMAL"
    )
    out["sqlite_claims_full"] = ceilings.sqlite_claims(
        tmp, claims=2_000 // scale, synchronous="FULL"
    )
    return out


def drive(
    subject: str, *, tasks: int, round_trips: int, workloads: str, redis_url: str, log: Path
) -> dict[str, Any]:
    """One driver process for one subject; its report, plus any worker left behind."""
    tmp = Path(tempfile.mkdtemp(prefix=f"pluq-bench-{subject}-"))
    pid_file = tmp / "worker-sessions"
    env = {**os.environ, "BENCH_REDIS_URL": redis_url}
    argv = [
        sys.executable, "-m", "bench.drive", subject, "--tasks", str(tasks),
        "--round-trips", str(round_trips), "--tmp", str(tmp), "--pid-file", str(pid_file),
        "--workloads", workloads,
    ]  # fmt: skip
    result: dict[str, Any] = {"subject": subject, "figures": {}, "details": {}, "errors": []}
    try:
        with open(log, "ab") as err:
            err.write(f"\n=== {subject} ===\n".encode())
            err.flush()
            done = subprocess.run(
                argv,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                timeout=DRIVER_TIMEOUT,
                check=False,
            )
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        if lines:
            result = json.loads(lines[-1])
        if done.returncode != 0:
            result["errors"].append(f"the driver exited with code {done.returncode}; see {log}")
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        result["errors"].append(f"driver: {type(exc).__name__}: {exc}; see {log}")
    finally:
        # Whatever a crashed or timed-out driver left running is killed here, and reported.
        left: list[int] = list(result.get("leftovers", []))
        with contextlib.suppress(OSError):
            for line in pid_file.read_text().split():
                left += kill_session(int(line))
        if left:
            result["errors"].append(f"worker processes left running, killed: {sorted(set(left))}")
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, 1 run")
    parser.add_argument("--tasks", type=int, help="tasks per enqueue/drain (default 10,000)")
    parser.add_argument("--runs", type=int, help="runs, each figure is their median (default 3)")
    parser.add_argument("--round-trips", type=int, default=200, help="latency round trips")
    parser.add_argument("--subjects", default=",".join(SUBJECTS), help="comma-separated")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--no-ceilings", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.* go")
    args = parser.parse_args(argv)
    tasks = args.tasks or (1_000 if args.quick else 10_000)
    runs = args.runs or (1 if args.quick else 3)
    subjects = [s for s in args.subjects.split(",") if s]
    unknown = set(subjects) - set(SUBJECTS)
    if unknown:
        parser.error(
            f"unknown subjects: {', '.join(sorted(unknown))}; known: {', '.join(SUBJECTS)}"
        )

    from rich.console import Console
    from transports._servers import start_redis

    console = Console(stderr=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "drivers.log"
    log.write_bytes(b"")
    info, installed = machine(), versions()
    console.print(
        f"[bold]pluq bench[/]: {tasks:,} tasks x {runs} run(s), subjects: "
        f"{', '.join(subjects)}; drivers log to {log}"
    )
    per_run: dict[str, list[dict[str, float]]] = {s: [] for s in subjects}
    details: dict[str, list[dict[str, float]]] = {s: [] for s in subjects}
    ceiling_runs: dict[str, list[dict[str, float]]] = {"ceilings": []}
    errors: list[str] = []
    started = time.monotonic()
    with start_redis() as server:
        redis_url = server.url
        for run in range(1, runs + 1):
            if not args.no_ceilings:
                try:
                    measured = measure_ceilings(server.port, redis_url, quick=args.quick)
                    ceiling_runs["ceilings"].append(measured)
                    console.print(
                        f"run {run}/{runs} ceilings: "
                        + ", ".join(f"{k}={v:,.0f}" for k, v in measured.items())
                    )
                except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
                    errors.append(f"run {run} ceilings: {exc}")
            for subject in subjects:
                t0 = time.monotonic()
                result = drive(
                    subject,
                    tasks=tasks,
                    round_trips=args.round_trips,
                    workloads=args.workloads,
                    redis_url=redis_url,
                    log=log,
                )
                per_run[subject].append(result["figures"])
                details[subject].append({k: float(v) for k, v in result["details"].items()})
                errors += [f"run {run} {subject}: {e}" for e in result["errors"]]
                shown = ", ".join(f"{k}={v:,.2f}" for k, v in result["figures"].items())
                flag = " [red]errors[/]" if result["errors"] else ""
                console.print(
                    f"run {run}/{runs} {subject} ({time.monotonic() - t0:.0f} s){flag}: {shown}"
                )
    info["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["wall_seconds"] = round(time.monotonic() - started)
    figures = report.aggregate(per_run)
    ceiling_figures = report.aggregate(ceiling_runs).get("ceilings", {})
    ratio, basis = report.ratios(figures)
    doc: dict[str, Any] = {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "tasks": tasks,
        "runs": runs,
        "round_trips": args.round_trips,
        "machine": info,
        "versions": installed,
        "figures": figures,
        "details": report.aggregate(details),
        "ceilings": ceiling_figures,
        "ratios": ratio,
        "ratio_basis": basis,
        "targets": report.targets(figures, ratio, ceiling_figures),
        "notes": {name: note for name, note in NOTES.items()},
        "errors": errors,
    }
    md, js = report.write(doc, args.out)
    out = Console()
    if not out.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        out = Console(width=200)
    out.print(report.render_table(doc))
    out.print(report.render_ratio_table(doc))
    for e in errors:
        console.print(f"[red]error[/] {e.splitlines()[0]}")
    console.print(f"wrote {md} and {js}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

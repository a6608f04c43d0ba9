"""Where the time goes per task when pluq drains on Redis: CPU accounting and py-spy.

    python -m bench.profile [--tasks 20000] [--rate 200] [--out bench/results]

Starts a throwaway redis-server, queues N no-op tasks with `noop.map` (pluq on Redis, the
bench's app; `--subject pluq-sqlite` for SQLite), starts `pluq worker -c 2`, waits for its
first result (so that start-up is not profiled), then while the rest drain:

- reads each process's CPU time (utime + stime from /proc) before and after: supervisor,
  each child, redis-server - the exact CPU cost per task, without a profiler's overhead;
- records the supervisor and its children with `py-spy record --subprocesses --nonblocking
  --format raw` (on-CPU samples only), and ranks functions per process by self time and by
  inclusive time.

Writes `profile-SUBJECT.md` (the tables) and `profile-SUBJECT-stacks.txt` (the collapsed
stacks, for a flame graph: `flamegraph.pl profile-pluq-redis-stacks.txt > profile.svg`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.drive import REPO, configure
from bench.procs import SessionWorker, session_members

__all__ = ["main"]

TICKS = os.sysconf("SC_CLK_TCK")
PROCESS_FRAME = re.compile(r'process (\d+):"[^"]*"')


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def roles(session: int) -> dict[int, str]:
    """supervisor, forkserver, resource_tracker, child-N for a pluq worker's session."""
    members = session_members(session)
    out = {session: "supervisor"}
    forkservers = set()
    for m in members:
        line = cmdline(m.pid)
        if "forkserver" in line and m.ppid == session:
            out[m.pid] = "forkserver"
            forkservers.add(m.pid)
        elif "resource_tracker" in line:
            out[m.pid] = "resource_tracker"
    # Forked by the supervisor itself (its first children), or by its forkserver (later).
    parents = forkservers | {session}
    children = sorted(m.pid for m in members if m.ppid in parents and m.pid not in out)
    for n, pid in enumerate(children):
        out[pid] = f"child-{n}"
    return out


def parse_stacks(path: Path) -> dict[int, Counter[tuple[str, ...]]]:
    """py-spy's raw (collapsed) output: per pid, a Counter of Python stacks (root first).

    With --subprocesses a stack starts with one `process PID:"cmdline"` frame per level of
    the process tree (supervisor, forkserver, child); the innermost one owns the stack. A
    command line may hold ";" (the forkserver's does), so they are matched, not split.
    """
    per_pid: dict[int, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        owners = list(PROCESS_FRAME.finditer(stack))
        if not owners or not count.isdigit():
            continue
        frames = stack[owners[-1].end() :].lstrip(";")
        python = tuple(f for f in frames.split(";") if f and not f.startswith("thread "))
        per_pid[int(owners[-1].group(1))][python] += int(count)
    return per_pid


def _function(frame: str) -> str:
    # "Supervisor.run (pluq/worker/supervisor.py:240)" -> "Supervisor.run (supervisor.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rpartition(':')[0]).name})" if where else name


def ranking(stacks: Counter[tuple[str, ...]], top: int) -> tuple[list[Any], list[Any], int]:
    """(self time by function, inclusive time by pluq function, total samples).

    Inclusive time counts only pluq's own frames, so that the entry points every sample
    shares (runpy, typer, the worker loop) do not fill the table.
    """
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        if stack:
            own[_function(stack[-1])] += count
        for frame in {_function(f) for f in stack if "pluq/" in f and "pluq/cli/" not in f}:
            inclusive[frame] += count
    return own.most_common(top), inclusive.most_common(top), total


def command_calls(url: str) -> Counter[str]:
    """Calls per Redis command so far, from INFO commandstats."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--subject", default="pluq-redis", choices=["pluq-redis", "pluq-sqlite"])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        parser.error("py-spy is not installed here: pip install py-spy")

    from transports._servers import start_redis

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pluq-profile-"))
    raw = tmp / "stacks.txt"
    lines: list[str] = []
    with start_redis() as server:
        os.environ["BENCH_REDIS_URL"] = server.url
        configure(args.subject, tmp)
        from bench.adapters import make_adapter

        adapter = make_adapter(args.subject)
        adapter.reset()
        first = adapter.enqueue("noop", 0)
        handles = adapter.enqueue_bulk(range(1, args.tasks))
        worker = SessionWorker(
            adapter.worker_command(), env=os.environ, cwd=REPO, log=tmp / "worker.log"
        )
        spy: subprocess.Popen[bytes] | None = None
        try:
            adapter.get(first, 60.0)
            who = roles(worker.session)
            on_redis = args.subject == "pluq-redis"
            redis_pid = (server.pid or 0) if on_redis else 0
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(worker.session), "--subprocesses",
                 "--nonblocking", "--rate", str(args.rate), "--format", "raw",
                 "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches to every process before it samples
            watched = [*who, *([redis_pid] if redis_pid else [])]
            before = {pid: cpu_seconds(pid) for pid in watched}
            calls_before = command_calls(server.url)
            t0 = time.perf_counter()
            # What is still queued or running now is what the measurement covers (one
            # look at the broker: looking at every result first would take seconds).
            measured = adapter.m.app.broker.counts(["default"])["default"].total
            while not adapter.is_done(handles[-1]):
                time.sleep(0.005)  # the bench's way of watching a drain (see bench.drive)
            elapsed = time.perf_counter() - t0
            after = {pid: cpu_seconds(pid) for pid in before}
            calls = command_calls(server.url) - calls_before
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(60)
            worker.stop()
    lines += [
        f"# Where the time goes: {args.subject}, `pluq worker -c 2`, draining no-op tasks",
        "",
        f"{measured:,} tasks drained while measured in {elapsed:.2f} s "
        f"({measured / elapsed:,.0f} tasks/s under py-spy --nonblocking at {args.rate} Hz).",
        "",
        "## CPU per task, from /proc (utime + stime)",
        "",
        "| process | CPU s | CPU µs per task | share of one core |",
        "|---|---:|---:|---:|",
    ]
    for pid in before:
        role = who.get(pid, "redis-server")
        cpu = after[pid] - before[pid]
        lines.append(
            f"| {role} ({pid}) | {cpu:.2f} | {cpu / measured * 1e6:,.0f} | {cpu / elapsed:.0%} |"
        )
    lines += (
        []
        if not on_redis
        else [
            "",
            "## Redis commands per task (INFO commandstats; the bench's own looks included)",
            "",
            "| command | calls | per task |",
            "|---|---:|---:|",
        ]
    )
    for command, count in calls.most_common() if on_redis else ():
        lines.append(f"| {command} | {count:,} | {count / measured:.2f} |")
    per_pid = parse_stacks(raw) if raw.exists() else {}
    for pid, role in who.items():
        if role not in ("supervisor", "child-0") or pid not in per_pid:
            continue
        own, inclusive, total = ranking(per_pid[pid], args.top)
        lines += ["", f"## {role} (pid {pid}): {total:,} on-CPU samples", ""]
        lines += ["| self % | function |  | inclusive % | function |", "|---:|---|---|---:|---|"]
        for (f1, c1), (f2, c2) in zip(own, inclusive, strict=False):
            lines.append(f"| {c1 / total:.1%} | `{f1}` |  | {c2 / total:.1%} | `{f2}` |")
    if not per_pid:
        lines += ["", f"(py-spy wrote no samples; its output was to be {raw})"]
    lines.append("")
    (args.out / f"profile-{args.subject}.md").write_text("\n".join(lines))
    if raw.exists():
        shutil.copy(raw, args.out / f"profile-{args.subject}-stacks.txt")
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

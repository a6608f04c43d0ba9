"""pluq's benchmark harness: pluq side by side with Celery, RQ, Huey and Dramatiq.

    python -m bench.run --quick        1,000 tasks, 1 run: a few minutes, for development
    python -m bench.run                10,000 tasks, 3 runs: the figures the issue asks for
    nox -s bench                       the same, with the peers installed (pinned) in the
                                       session's own virtualenv

Performance is judged as ratios measured side by side in one run on one machine, never as
absolute times (they drift on a shared machine): every library runs every workload in each
run, in the same order (A B A B), and each figure is the median of the runs with min-max.

Modules:
    run.py        the entry point: starts a throwaway redis-server, runs the ceilings and a
                  driver process per (run, subject), aggregates, writes results/latest.*
    drive.py      one driver process: the workloads for one subject, as a JSON line
    adapters.py   one small adapter per library: enqueue, bulk enqueue, wait, worker command
    peers/        the task modules the workers import (one per library, nothing else)
    procs.py      process sessions read from /proc: peak RSS of a worker tree, stopping it
    ceilings.py   redis-benchmark LPUSH/RPOP, redis-py PING, SQLite claim transactions
    report.py     medians, ratios, targets, the rich table, latest.md and latest.json
    profile.py    py-spy on the pluq supervisor and a child while they drain on Redis
"""

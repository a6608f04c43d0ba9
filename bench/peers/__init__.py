"""Task modules, one per library, imported by that library's worker and by the driver.

Each defines the same three tasks, and nothing else is imported by a worker:

    noop(x)        returns x (enqueue, drain, latency)
    nap(seconds)   time.sleep(seconds), returns seconds (sleep)
    stamp(x)       returns time.time() when it starts (delayed: how late it starts)

Configuration comes from the environment, set by `bench.drive` for itself and its workers:
``BENCH_REDIS_URL``, ``BENCH_PLUQ_URL``, ``BENCH_HUEY_SQLITE``.
"""

"""The loky side of the loky-run benchmark suite (`cargo run --release -p bench`).

Each subcommand runs one workload with loky's reusable executor (2 workers) and prints one JSON
object on stdout. The Rust harness runs these interleaved with the same workloads on loky-run.
Task functions are defined here (module level, so loky pickles them by value) and match the demo
plugin's tasks: echo, square, cpu (sum of i*i for i < n*1000, wrapping at 64 bits), sleep_ms.
Outputs are written as `<stage>.jsonl` records like loky-run's (batched writes, orjson when
installed: see write_records), unless --no-out is given.
"""

import argparse
import itertools
import json
import os
import sys
import time

from loky import get_reusable_executor

WORKERS = 2
MASK = 0xFFFFFFFFFFFFFFFF


def echo(x):
    return x


def square(x):
    return x * x


def cpu(n):
    s = 0
    for i in range(n * 1000):
        s = (s + i * i) & MASK
    return s


def sleep_ms(n):
    time.sleep(n / 1000.0)
    return n


def getpid(_):
    return os.getpid()


try:
    import orjson

    _orjson = orjson.dumps

    def encode(v):
        return _orjson(v).decode()

except ImportError:  # the stdlib encoder, built once (json.dumps with arguments builds one per call)
    encode = json.JSONEncoder(separators=(",", ":")).encode

BATCH = 10_000


def write_records(path, results):
    """Writes `{"index": i, "output": r}` lines, like loky-run's output files, the cheapest way we
    found: one write per batch of pre-joined lines, values serialized by orjson when it is
    installed. (`json.dumps` per record cost ~2.2 s per 1M records and made loky look ~3× slower
    than it is.)"""
    count = 0
    it = iter(results)
    with open(path, "w") as f:
        while True:
            batch = list(itertools.islice(it, BATCH))
            if not batch:
                return count
            f.write("".join(['{"index":%d,"output":%s}\n' % (count + k, encode(r)) for k, r in enumerate(batch)]))
            count += len(batch)


def tee(results, keep):
    for r in results:
        keep.append(r)
        yield r


def consume(results):
    count = 0
    for _ in results:
        count += 1
    return count


def executor(restart=False):
    # loky restarts only when `reuse` is False (or its arguments changed); `kill_workers=True`
    # alone keeps the pool and only says how the old workers are stopped on a restart.
    if restart:
        return get_reusable_executor(max_workers=WORKERS, reuse=False, kill_workers=True)
    return get_reusable_executor(max_workers=WORKERS)


def warm(ex):
    # Starts every worker and runs one task in each, so timings below are steady state.
    list(ex.map(sleep_ms, [20] * WORKERS, chunksize=1))


def cmd_cold(a):
    ex = executor()
    write_records(os.path.join(a.outdir, "echo.jsonl"), ex.map(echo, range(2)))
    return {}


def cmd_throughput(a):
    ex = executor()
    warm(ex)
    t0 = time.perf_counter()
    results = ex.map(echo, range(a.n), chunksize=a.chunksize)
    if a.outdir:
        count = write_records(os.path.join(a.outdir, "echo.jsonl"), results)
    else:
        count = consume(results)
    dt = time.perf_counter() - t0
    assert count == a.n, count
    return {"stage_s": dt}


def cmd_latency(a):
    ex = executor()
    warm(ex)
    for i in range(a.warmup):
        ex.submit(echo, i).result()
    samples = []
    clock = time.perf_counter_ns
    for i in range(a.n):
        t0 = clock()
        r = ex.submit(echo, i).result()
        samples.append(clock() - t0)
        assert r == i
    return {"samples_ns": samples}


def cmd_pipeline(a):
    t0 = time.perf_counter()
    ex = executor()
    stages = []
    s = time.perf_counter()
    squares = []
    write_records(os.path.join(a.outdir, "squares.jsonl"), tee(ex.map(square, range(a.n), chunksize=a.chunksize), squares))
    stages.append(time.perf_counter() - s)
    s = time.perf_counter()
    write_records(os.path.join(a.outdir, "work.jsonl"), ex.map(cpu, [1] * a.n, chunksize=a.chunksize))
    stages.append(time.perf_counter() - s)
    s = time.perf_counter()
    write_records(os.path.join(a.outdir, "copied.jsonl"), ex.map(echo, squares, chunksize=a.chunksize))
    stages.append(time.perf_counter() - s)
    return {"stage_s": stages, "total_s": time.perf_counter() - t0}


def cmd_makespan(a):
    # Sleep tasks of the given durations on a fresh pool of `workers`, one task per message
    # (loky's map default), results in order. Measures from the first submit to the last result.
    with open(a.items) as f:
        items = json.load(f)
    ex = get_reusable_executor(max_workers=a.workers, reuse=False, kill_workers=True)
    s = time.perf_counter()
    consume(ex.map(sleep_ms, items, chunksize=1))
    return {"makespan_s": time.perf_counter() - s}


def cmd_restart(a):
    # Iteration 0 starts the pool; every later one restarts it (reuse=False, kill_workers=True),
    # like a loky-run stage with kill_workers = true. With --reuse the pool is kept instead.
    iters = []
    for k in range(a.stages):
        s = time.perf_counter()
        ex = executor(restart=not a.reuse)
        out = list(ex.map(echo, range(2)))
        iters.append(time.perf_counter() - s)
        assert out == [0, 1]
    return {"iter_s": iters}


def cmd_payload(a):
    ex = executor()
    warm(ex)
    value = "x" * a.size
    t0 = time.perf_counter()
    results = ex.map(echo, (value for _ in range(a.n)), chunksize=1)
    count = write_records(os.path.join(a.outdir, "payload.jsonl"), results) if a.outdir else consume(results)
    dt = time.perf_counter() - t0
    assert count == a.n
    return {"stage_s": dt}


def status_kb(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def cmd_rss(a):
    ex = executor()
    warm(ex)
    pids = sorted(set(ex.map(getpid, range(WORKERS * 4), chunksize=1)))
    time.sleep(a.settle_ms / 1000.0)  # workers now idle, waiting for work
    return {"workers": [dict(pid=p, **status_kb(p)) for p in pids], "parent": status_kb(os.getpid())}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cold")
    c.add_argument("--outdir", required=True)
    c = sub.add_parser("throughput")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--chunksize", type=int, required=True)
    c.add_argument("--outdir")
    c = sub.add_parser("latency")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--warmup", type=int, default=200)
    c = sub.add_parser("pipeline")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--chunksize", type=int, required=True)
    c.add_argument("--outdir", required=True)
    c = sub.add_parser("restart")
    c.add_argument("--stages", type=int, required=True)
    c.add_argument("--reuse", action="store_true")
    c = sub.add_parser("payload")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--outdir")
    c = sub.add_parser("makespan")
    c.add_argument("--items", required=True)
    c.add_argument("--workers", type=int, required=True)
    c = sub.add_parser("rss")
    c.add_argument("--settle-ms", type=int, default=500)
    a = p.parse_args()
    result = globals()["cmd_" + a.cmd](a)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The Python peers of `cargo run --release -p bench -- peers`: multiprocessing.Pool, loky and
HyperQueue (its LocalCluster), one workload per invocation, one JSON object on the last line of
stdout. The Rust harness runs these interleaved with loky-run (A B C D A B C D ...).

    python peers.py PEER WORKLOAD [options]      PEER: pool | loky | hq

Every peer is run as fast as it can be made to run:

- results are written the cheapest way we found: one `write` per batch of pre-joined
  `{"index":i,"output":r}` lines, each value serialized with orjson when it is installed (the
  stdlib encoder built once otherwise; `json.dumps` per record cost ~2.2 s per 1M records);
- Pool and loky use the chunk size the harness found best in a sweep (`--chunksize`), and Pool
  forks its workers (Linux's default start method, its fastest);
- HyperQueue runs one job of many tasks (its Python API has no task arrays; one job is its
  cheapest submission; chained stages are one job with a barrier task between stages), program
  tasks with no stdout/stderr files, and its end is seen within a millisecond (see `HQ`). Its tasks are processes, so
  its no-op is `/bin/true`, it writes no result records, and the task functions below do not
  apply to it.

A peer that is not installed prints `{"missing": "..."}` and exits with status 3.
"""

import argparse
import itertools
import json
import os
import sys
import time

WORKERS = 2
MASK = 0xFFFFFFFFFFFFFFFF
BATCH = 10_000

try:
    import orjson

    _orjson = orjson.dumps

    def encode(v):
        return _orjson(v).decode()

    ENCODER = "orjson " + orjson.__version__
except ImportError:  # the stdlib encoder, built once (json.dumps with arguments builds one per call)
    encode = json.JSONEncoder(separators=(",", ":")).encode
    ENCODER = "json.JSONEncoder (orjson not installed)"


# The tasks, as in loky_bench.py and the demo plugin.
def echo(x):
    return x


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


def write_records(path, results):
    """`{"index": i, "output": r}` lines like loky-run's, one write per batch of BATCH lines."""
    count = 0
    it = iter(results)
    with open(path, "w") as f:
        while True:
            batch = list(itertools.islice(it, BATCH))
            if not batch:
                return count
            f.write("".join(['{"index":%d,"output":%s}\n' % (count + k, encode(r)) for k, r in enumerate(batch)]))
            count += len(batch)


def status_kb(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


def tree(root):
    """`root` and every live descendant of it (by the parent pids in /proc)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found = [root]
    for p in found:
        found.extend(c for c, pp in parent.items() if pp == p)
    return found


def memory(workers):
    """The workers' memory, and that of every process of the pool (this one and its descendants)."""
    everyone = []
    for q in tree(os.getpid()):
        try:
            everyone.append(dict(pid=q, **status_kb(q)))
        except OSError:
            pass
    return {"workers": [dict(pid=q, **status_kb(q)) for q in workers], "all": everyone}


def missing(what):
    sys.stdout.write(json.dumps({"missing": what}) + "\n")
    sys.exit(3)


# ---- multiprocessing.Pool and loky: the same code over two executors ----------------------


class PoolPeer:
    """multiprocessing.Pool (fork), `imap` (ordered, streaming: the writer overlaps the workers)."""

    def __init__(self, workers=WORKERS):
        import multiprocessing

        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def map(self, fn, items, chunksize):
        return self.pool.imap(fn, items, chunksize=chunksize)

    def pids(self):
        return sorted(p.pid for p in self.pool._pool)

    def warm(self):
        list(self.pool.map(sleep_ms, [20] * WORKERS, chunksize=1))

    def close(self):
        self.pool.terminate()
        self.pool.join()


class LokyPeer:
    """loky's reusable executor, `map` with a chunk size (results streamed in order)."""

    def __init__(self, workers=WORKERS, fresh=False):
        try:
            from loky import get_reusable_executor
        except ImportError:
            missing("loky (pip install loky)")
        if fresh:
            self.ex = get_reusable_executor(max_workers=workers, reuse=False, kill_workers=True)
        else:
            self.ex = get_reusable_executor(max_workers=workers)

    def map(self, fn, items, chunksize):
        return self.ex.map(fn, items, chunksize=chunksize)

    def pids(self):
        return sorted(set(self.ex.map(getpid, range(WORKERS * 4), chunksize=1)))

    def warm(self):
        list(self.ex.map(sleep_ms, [20] * WORKERS, chunksize=1))

    def close(self):
        self.ex.shutdown(wait=True)


def peer(name, **kw):
    return PoolPeer(**kw) if name == "pool" else LokyPeer(**kw)


def py_cold(a):
    p = peer(a.peer)
    write_records(os.path.join(a.outdir, "echo.jsonl"), p.map(echo, range(2), 1))
    p.close()
    return {}


def py_throughput(a):
    # stage_s: the map and the writing, on a started, warm pool (generous to the peer: loky-run's
    # stage time includes starting its workers). The harness also times the whole process.
    p = peer(a.peer)
    p.warm()
    t0 = time.perf_counter()
    count = write_records(os.path.join(a.outdir, "echo.jsonl"), p.map(echo, range(a.n), a.chunksize))
    dt = time.perf_counter() - t0
    assert count == a.n, count
    p.close()
    return {"stage_s": dt, "encoder": ENCODER}


def py_chained(a):
    # Stage 1 echoes range(n); each next stage echoes the previous stage's outputs; every stage
    # writes its file before the next starts (as loky-run's `from` stages do).
    p = peer(a.peer)
    stages = []
    items = range(a.n)
    for k in range(a.stages):
        s = time.perf_counter()
        out = []
        write_records(os.path.join(a.outdir, "s%d.jsonl" % k), _tee(p.map(echo, items, a.chunksize), out))
        stages.append(time.perf_counter() - s)
        assert len(out) == a.n
        items = out
    p.close()
    return {"stage_s": stages}


def _tee(results, keep):
    for r in results:
        keep.append(r)
        yield r


def py_serial(a):
    # The same tasks in one loop in this process: the serial time the CPU workload's ideal is
    # computed from.
    items = [a.work] * a.tasks
    s = time.perf_counter()
    for x in items:
        cpu(x)
    return {"serial_s": time.perf_counter() - s}


def py_cpu(a):
    # A fresh pool (its start is counted, as loky-run's stage time counts starting its workers),
    # `tasks` CPU tasks, outputs written.
    s = time.perf_counter()
    p = peer(a.peer, **({"fresh": True} if a.peer == "loky" else {}))
    write_records(os.path.join(a.outdir, "cpu.jsonl"), p.map(cpu, [a.work] * a.tasks, 1))
    dt = time.perf_counter() - s
    p.close()
    return {"wall_s": dt}


def py_makespan(a):
    # Sleep tasks on a fresh pool of `workers`, one task per message; from before the pool is
    # created to the last result.
    with open(a.items) as f:
        items = json.load(f)
    s = time.perf_counter()
    p = peer(a.peer, workers=a.workers, **({"fresh": True} if a.peer == "loky" else {}))
    for _ in p.map(sleep_ms, items, 1):
        pass
    dt = time.perf_counter() - s
    p.close()
    return {"makespan_s": dt}


def py_rss(a):
    p = peer(a.peer)
    p.warm()
    pids = p.pids()
    time.sleep(a.settle_ms / 1000.0)  # the workers now wait for work
    out = memory(pids)
    p.close()
    return out


# ---- HyperQueue ----------------------------------------------------------------------------


class HQ:
    """A LocalCluster (server and one worker of `cores` cores inside this process).

    The client's `wait_for_jobs` polls the server once a second (a job of one /bin/true task
    "takes" 1.00 s through it), which would bound every figure here by that period. So a job
    ends with a sentinel task that depends on all its tasks and touches a file; this process
    polls for that file every millisecond, and the job's end is the file's mtime (the kernel's
    coarse clock: a few ms of resolution; the sentinel, one more task, makes it slightly late).
    `wait_for_jobs` then confirms that every task succeeded, outside the timed span.
    """

    def __init__(self, cores=WORKERS):
        os.environ.setdefault("TQDM_DISABLE", "1")
        try:
            from hyperqueue import Job, LocalCluster
            from hyperqueue.cluster import WorkerConfig
        except ImportError:
            missing("hyperqueue (pip install hyperqueue)")
        import tempfile

        self.Job = Job
        self.tmp = tempfile.TemporaryDirectory(prefix="peers-hq-")
        self.cluster = LocalCluster(server_dir=os.path.join(self.tmp.name, "server"))
        self.cluster.start_worker(WorkerConfig(cores=cores))
        self.client = self.cluster.client()
        self.jobs = 0

    def run(self, stages, check=True):
        """One job: the program tasks of `stages` (lists of argument lists), each stage starting
        when the one before has ended (a barrier task between them). Returns the seconds from
        submit to the end of each stage."""
        self.jobs += 1
        job = self.Job()
        marks = []
        before = []
        for k, programs in enumerate(stages):
            tasks = [job.program(args, stdout=None, stderr=None, deps=before) for args in programs]
            mark = os.path.join(self.tmp.name, "job%d-stage%d" % (self.jobs, k))
            before = [job.program(["/usr/bin/touch", mark], stdout=None, stderr=None, deps=tasks)]
            marks.append(mark)
        t0 = time.time_ns()
        submitted = self.client.submit(job)
        deadline = time.monotonic() + 600
        while not os.path.exists(marks[-1]):
            if time.monotonic() > deadline:
                raise SystemExit("a HyperQueue job did not end within 600 s")
            time.sleep(0.001)
        ends = [(os.stat(m).st_mtime_ns - t0) / 1e9 for m in marks]
        if check and not self.client.wait_for_jobs([submitted], raise_on_error=False):
            raise SystemExit("a HyperQueue job failed")
        return ends

    def close(self):
        self.cluster.stop()
        self.tmp.cleanup()


def hq_cold(a):
    # A whole process: the cluster starts, runs 2 tasks, and stops as soon as their end is seen.
    h = HQ()
    h.run([[["/bin/true"]] * 2], check=False)
    h.close()
    return {}


def hq_throughput(a):
    # A job of n /bin/true tasks on a started cluster whose worker ran one job already; from
    # submit to the job's end (the cluster's start left out: generous to HQ).
    h = HQ()
    h.run([[["/bin/true"]]])
    (dt,) = h.run([[["/bin/true"]] * a.n])
    h.close()
    return {"stage_s": dt}


def hq_chained(a):
    # `stages` stages of n /bin/true tasks in one job, a barrier task between two stages (HQ's
    # cheapest way to say "after all of those"; separate jobs would wait for the client's poll).
    h = HQ()
    h.run([[["/bin/true"]]])
    ends = h.run([[["/bin/true"]] * a.n for _ in range(a.stages)])
    h.close()
    return {"stage_s": [b - a for a, b in zip([0.0] + ends, ends)]}


def hq_cpu(a):
    # `tasks` program tasks, each the bench binary burning the same loop as demo::cpu.
    h = HQ()
    h.run([[["/bin/true"]]])
    (dt,) = h.run([[[a.program, "__cpu", str(a.work)]] * a.tasks])
    h.close()
    return {"wall_s": dt}


def hq_makespan(a):
    with open(a.items) as f:
        items = json.load(f)
    h = HQ(cores=a.workers)
    h.run([[["/bin/true"]]])
    (dt,) = h.run([[["/bin/sleep", "%g" % (ms / 1000.0)] for ms in items]])
    h.close()
    return {"makespan_s": dt}


def hq_rss(a):
    # Server, worker and client are all this one process (LocalCluster): its memory, idle, after
    # one job ran.
    h = HQ()
    h.run([[["/bin/true"]] * WORKERS])
    time.sleep(a.settle_ms / 1000.0)
    out = memory([])
    h.close()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("peer", choices=["pool", "loky", "hq"])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cold")
    c.add_argument("--outdir", required=True)
    c = sub.add_parser("throughput")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--chunksize", type=int, default=1)
    c.add_argument("--outdir", required=True)
    c = sub.add_parser("chained")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--stages", type=int, required=True)
    c.add_argument("--chunksize", type=int, default=1)
    c.add_argument("--outdir", required=True)
    c = sub.add_parser("serial")
    c.add_argument("--tasks", type=int, required=True)
    c.add_argument("--work", type=int, required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--tasks", type=int, required=True)
    c.add_argument("--work", type=int, required=True)
    c.add_argument("--outdir", required=True)
    c.add_argument("--program", help="HyperQueue: the program that burns the CPU")
    c = sub.add_parser("makespan")
    c.add_argument("--items", required=True)
    c.add_argument("--workers", type=int, required=True)
    c = sub.add_parser("rss")
    c.add_argument("--settle-ms", type=int, default=500)
    a = p.parse_args()
    prefix = "hq_" if a.peer == "hq" else "py_"
    fn = globals().get(prefix + a.cmd)
    if fn is None:
        raise SystemExit("%s has no workload %s" % (a.peer, a.cmd))
    result = fn(a)
    # This process's CPU (Python peers: the parent, i.e. the dispatching side; HyperQueue: server,
    # worker and client) and that of the children it reaped (workers, task processes).
    import resource

    for key, who in (("self_cpu_s", resource.RUSAGE_SELF), ("children_cpu_s", resource.RUSAGE_CHILDREN)):
        r = resource.getrusage(who)
        result[key] = r.ru_utime + r.ru_stime
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

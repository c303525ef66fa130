"""HyperQueue's LocalCluster as the same-machine peer of `bench -- scaling`.

One LocalCluster (server and worker inside this Python process, through the `hyperqueue`
wheel's FFI) with one worker of CORES cores; one job of N program tasks (`/bin/true`, or
`/bin/sleep 0.001` for the 1 ms kind), no stdout/stderr files; wall time from submit to the
job's end, and the CPU of this process (HQ server + worker + client threads) and of its
children (the task processes) over that span. Prints one JSON object per measurement.

    python hq_scaling.py --cores 16,64,128 --tasks 5000 --kind true
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time


def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def measure(cores, n, kind):
    from hyperqueue import Job, LocalCluster
    from hyperqueue.cluster import WorkerConfig

    args = ["/bin/true"] if kind == "true" else ["/bin/sleep", "0.001"]
    with tempfile.TemporaryDirectory(prefix="hq-scaling-") as d:
        with LocalCluster(server_dir=d) as cluster:
            cluster.start_worker(WorkerConfig(cores=cores))
            client = cluster.client()
            # One small job first: the worker is connected and warm before the measured one.
            warm = Job()
            for _ in range(cores):
                warm.program(["/bin/true"], stdout=None, stderr=None)
            client.wait_for_jobs([client.submit(warm)])
            job = Job()
            for _ in range(n):
                job.program(args, stdout=None, stderr=None)
            s0, c0, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
            submitted = client.submit(job)
            t_sub = time.perf_counter()
            client.wait_for_jobs([submitted])
            t1 = time.perf_counter()
            s1, c1 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    wall = t1 - t0
    return {
        "cores": cores,
        "kind": kind,
        "tasks": n,
        "wall_s": wall,
        "submit_s": t_sub - t0,
        "tasks_per_s": n / wall,
        "per_task_ms": wall * 1e3 / n,
        "hq_cpu_s": s1 - s0,
        "hq_cpu_per_task_us": (s1 - s0) * 1e6 / n,
        "children_cpu_s": c1 - c0,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cores", default="16,64,128")
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--kind", choices=["true", "sleep"], default="true")
    a = p.parse_args()
    # tqdm's progress bar would go to stderr: keep the output clean.
    os.environ.setdefault("TQDM_DISABLE", "1")
    for cores in [int(c) for c in a.cores.split(",") if c]:
        print(json.dumps(measure(cores, a.tasks, a.kind)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

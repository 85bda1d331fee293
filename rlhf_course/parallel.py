"""Independent runs on several cores: the tiny model is too small for two threads to help one run, so a
2-core machine is used best by two single-threaded runs side by side (the over-optimisation lab's PPO
runs, the methods table's seeds).

    collect = start_jobs({"a": (train, (profile, 1)), "b": (train, (profile, 2))}, workers=2)
    ...                                   # this process goes on (e.g. samples best-of-n) meanwhile
    results = collect()                   # {"a": ..., "b": ...}, waiting for the runs still going

Workers are spawned (a fresh interpreter each: no CUDA or thread state inherited from a notebook), so a
job must be a module-level function of an importable module, with picklable arguments and result.
"""

from __future__ import annotations

from typing import Callable


def _one_thread(fn: Callable, args: tuple):
    import torch

    torch.set_num_threads(1)
    return fn(*args)


def start_jobs(jobs: dict, workers: int = 2) -> Callable[[], dict]:
    """Start `jobs` ({key: (function, args)}) in `workers` processes, one thread each, and return a function
    that waits for them and returns {key: result}. With workers <= 1 nothing starts: the jobs run one after
    the other, in this process, when the function is called."""
    if workers <= 1:
        return lambda: {key: fn(*args) for key, (fn, args) in jobs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"))
    futures = {key: pool.submit(_one_thread, fn, args) for key, (fn, args) in jobs.items()}

    def collect() -> dict:
        try:
            return {key: future.result() for key, future in futures.items()}
        finally:
            pool.shutdown(cancel_futures=True)

    return collect

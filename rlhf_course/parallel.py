"""Independent runs on several cores: the tiny model is too small for two threads to help one run, so a
2-core machine is used best by two single-threaded runs side by side (the over-optimisation lab's PPO
runs, the methods table's seeds).

    collect = start_jobs({"a": (train, (profile, 1)), "b": (train, (profile, 2))}, workers=2)
    ...                                   # this process goes on (e.g. samples best-of-n) meanwhile
    results = collect()                   # {"a": ..., "b": ...}, waiting for the runs still going

Workers are spawned (a fresh interpreter each: no CUDA or thread state inherited from a notebook), so a
job must be a module-level function of an importable module, with picklable arguments and result. The
workers live on between calls (importing torch and the trainers once per worker, not once per call) and
end with the process. They run quietly: their prints and progress bars would land, out of order, in
whatever cell a notebook is running; an error still comes back, with its traceback, from `collect()`.
"""

from __future__ import annotations

import atexit
from contextlib import contextmanager
from typing import Callable

_POOLS: dict = {}  # workers -> the live ProcessPoolExecutor


def _quiet_worker() -> None:
    import os
    import sys
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)  # one core per run
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    devnull = open(os.devnull, "w")
    sys.stdout = sys.stderr = devnull
    os.dup2(devnull.fileno(), 1)  # and what C code writes to the file descriptors
    os.dup2(devnull.fileno(), 2)


def _pool(workers: int):
    if workers not in _POOLS:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_quiet_worker)
    return _POOLS[workers]


@atexit.register
def shutdown() -> None:
    """End the worker processes (at exit, or to free their memory earlier)."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown(cancel_futures=True)


@contextmanager
def one_thread(while_workers_run: bool = True):
    """This process on one thread while the workers use the other cores (oversubscribed cores slow every
    run); its thread count comes back afterwards, also after an error."""
    import torch

    threads = torch.get_num_threads()
    if while_workers_run:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def start_jobs(jobs: dict, workers: int = 2) -> Callable[[], dict]:
    """Start `jobs` ({key: (function, args)}) in `workers` processes, one thread each, and return a function
    that waits for them and returns {key: result}. With workers <= 1 nothing starts: the jobs run one after
    the other, in this process, when the function is called."""
    if workers <= 1:
        return lambda: {key: fn(*args) for key, (fn, args) in jobs.items()}
    pool = _pool(workers)
    futures = {key: pool.submit(fn, *args) for key, (fn, args) in jobs.items()}
    return lambda: {key: future.result() for key, future in futures.items()}

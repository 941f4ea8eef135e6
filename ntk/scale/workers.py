"""One kernel, many workers: the blocks of a store handed out as submitit jobs.

:func:`distribute_kernel` creates the store (:func:`ntk.store_kernel`'s ``meta.json`` and
zarr array) once, then submits ``n_workers`` jobs through a submitit executor, worker ``k``
computing the blocks ``b % n_workers == k`` of the grid. The same call runs

* on one machine with ``submitit.LocalExecutor`` (the default: job files under
  ``path/submitit``, nothing in the working directory),
* on a SLURM cluster with ``submitit.AutoExecutor(folder)`` (the first wave is one SLURM
  array job; configure partition, GPUs and time limit with ``update_parameters``).

A job that ends with its blocks incomplete (SIGKILL, node failure, out of memory, an
exception) is replaced by a new job for the same worker index, up to ``max_restarts`` times
per worker; the replacement skips the blocks its predecessor finished and redoes the rest.
On SLURM a job that times out or is preempted is requeued by submitit itself (the task is
``submitit.helpers.Checkpointable``), and also resumes from the completed blocks.

Each job rebuilds the problem by calling ``problem()`` (a picklable zero-argument callable
returning ``(apply_fn, params, x1, x2)``), so large inputs are loaded by the workers rather
than pickled into every job. With Hydra, the same workers run from a multirun over
``worker=0,...,n-1`` with ``hydra/launcher=submitit_slurm`` or ``submitit_local`` and a
task that calls :func:`ntk.store_kernel` (see ``docs/scale.md``); what Hydra's launcher
does not do is replace dead workers: re-run the sweep and only missing blocks are computed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from ntk.scale.blocks import progress_bar
from ntk.scale.store_read import WORKERS_DIR, _grid, done_blocks, missing_blocks, read_meta
from ntk.scale.store_write import create_store, store_kernel

Problem = Callable[[], tuple[Any, Any, Any, Any]]


def _submitit():
    try:
        import submitit
    except ImportError as e:  # pragma: no cover - pinned in requirements.txt
        raise ImportError(
            "ntk.scale.workers needs submitit: pip install submitit (or the 'sweeps' extra)"
        ) from e
    return submitit


def limit_cpus(cpus: Sequence[int]) -> None:
    """Pins this process to ``cpus`` and makes XLA's CPU backend use that many threads.
    Must run before JAX's backend starts (the first computation)."""
    os.sched_setaffinity(0, set(cpus))
    flags = os.environ.get("XLA_FLAGS", "")
    n = len(cpus)
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} "
        f"intra_op_parallelism_threads={n}"
    ).strip()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


class WorkerTask:
    """What one submitit job runs: worker ``worker`` of ``n_workers`` on the store.

    Picklable (submitit pickles it into the job folder) and checkpointable: on SLURM a
    timed-out or preempted job is requeued with the same task, which resumes from the
    completed blocks.
    """

    def __init__(
        self,
        problem: Problem,
        path: str | os.PathLike,
        worker: int,
        n_workers: int,
        store_options: dict,
        jax_config: dict,
        cpus: Sequence[int] | None = None,
    ):
        self.problem = problem
        self.path = str(path)
        self.worker = worker
        self.n_workers = n_workers
        self.store_options = dict(store_options)
        self.jax_config = dict(jax_config)
        self.cpus = None if cpus is None else list(cpus)

    def __call__(self) -> dict:
        if self.cpus is not None:
            limit_cpus(self.cpus)
        for name, value in self.jax_config.items():
            jax.config.update(name, value)
        run = dict(path=self.path, worker=self.worker, n_workers=self.n_workers, progress=False)
        t0 = time.perf_counter()
        store_kernel(*self.problem(), **run, **self.store_options)
        return {"worker": self.worker, "seconds": time.perf_counter() - t0}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook (SLURM timeout/preemption): run the same task again."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _worker_blocks(path: Path, worker: int, n_workers: int) -> list[tuple[int, int]]:
    grid = _grid(read_meta(path))
    return [b for k, b in enumerate(grid) if k % n_workers == worker]


def _why(job) -> str:
    """A short account of how a finished job ended (its error, or its log's tail)."""
    paths = job.paths
    if paths.result_pickle.exists():
        err = job.exception()
        return "finished without error" if err is None else str(err)[-1500:]
    tail = ""
    for p in (paths.stderr, paths.stdout):
        if p.exists():
            tail = p.read_text(errors="replace")[-800:]
            break
    return f"ended without a result (state {job.state}; killed?). Log tail:\n{tail}"


def _create(problem, path: Path, store_options: dict) -> None:
    """Creates (or checks) the store from ``problem()`` here, once; the workers then only
    open it."""
    apply_fn, params, x1, x2 = problem()
    create_store(
        apply_fn, params, x1, x2, path=path,
        **{k: v for k, v in store_options.items() if k not in ("devices", "callback")},
    )  # fmt: skip


def _local_executor(submitit, path: Path):
    """The default executor: local processes, with their files under ``path/submitit``."""
    executor = submitit.LocalExecutor(folder=path / "submitit")
    executor.update_parameters(timeout_min=7 * 24 * 60)
    return executor


def _launch(executor, problem, path, n_workers, store_options, cpus_per_worker, on_submit):
    """Submits every worker with blocks missing (one job array): ``(jobs, owned, restart)``,
    worker -> job, worker -> its blocks, and ``restart(w)``, which submits worker w again."""
    jax_config = {"jax_enable_x64": bool(jax.config.jax_enable_x64)}

    def task(w: int) -> WorkerTask:
        cpus = _worker_cpus(w, cpus_per_worker)
        return WorkerTask(problem, path, w, n_workers, store_options, jax_config, cpus)

    def submit(w: int, job):
        if on_submit is not None:
            on_submit(w, job)
        return job

    def restart(w: int):
        return submit(w, executor.submit(task(w)))

    owned = {w: set(_worker_blocks(path, w, n_workers)) for w in range(n_workers)}
    active = [w for w in range(n_workers) if owned[w] - done_blocks(path)]
    first = executor.submit_array([task(w) for w in active])
    jobs = {w: submit(w, job) for w, job in zip(active, first, strict=True)}
    return jobs, owned, restart


def distribute_kernel(
    problem: Problem,
    *,
    path: str | os.PathLike,
    n_workers: int,
    executor: Any | None = None,
    max_restarts: int = 3,
    cpus_per_worker: int | None = None,
    poll_s: float = 0.5,
    progress: bool = True,
    on_submit: Callable[[int, Any], None] | None = None,
    **store_options: Any,
) -> Path:
    """Computes a kernel into the store at ``path`` with ``n_workers`` submitit jobs.

    Args:
      problem: picklable zero-argument callable returning ``(apply_fn, params, x1, x2)``
        (``x2`` may be ``None``); called once here and once in every job. It must return the
        same values everywhere (``meta.json`` holds their digests and refuses anything else).
      path: the store directory (see :func:`ntk.store_kernel`); a finished store is returned
        at once, a partial one is completed.
      n_workers: how many jobs share the blocks.
      executor: a ``submitit`` executor (``AutoExecutor`` for SLURM, configured by you);
        default a ``LocalExecutor`` with its files under ``path/submitit``.
      max_restarts: how many times each worker may be replaced after its job ended with
        blocks missing; beyond that a ``RuntimeError`` gives the last job's error.
      cpus_per_worker: local runs only: pin worker k to cores ``[k·c, (k+1)·c)`` (modulo the
        machine's) and limit XLA's CPU threads to ``c``.
      poll_s: how often the jobs and the ``done/`` directory are checked.
      progress: a tqdm bar over all blocks.
      on_submit: called as ``on_submit(worker, job)`` after each submission (and
        resubmission), e.g. to log job ids.
      **store_options: keyword arguments of :func:`ntk.store_kernel` (``kind``,
        ``implementation``, ``block_size``, ``devices``, kind options).

    Returns:
      ``path``, complete; read it with :func:`ntk.open_kernel`.
    """
    _check_options(problem, n_workers, max_restarts, cpus_per_worker, store_options)
    submitit = _submitit()
    path = Path(path)
    _create(problem, path, store_options)
    if not missing_blocks(path):
        return path
    if executor is None:
        executor = _local_executor(submitit, path)
    jobs, owned, restart = _launch(
        executor, problem, path, n_workers, store_options, cpus_per_worker, on_submit
    )
    total = len(_grid(read_meta(path)))
    with progress_bar(total, 0, progress, f"{n_workers} workers") as bar:
        _supervise(path, jobs, owned, restart, max_restarts, poll_s, bar)
    missing = missing_blocks(path)
    if missing:  # pragma: no cover - every worker's blocks were checked above
        raise RuntimeError(f"distribute_kernel: blocks {missing[:5]} missing after all jobs")
    return path


def _check_options(problem, n_workers, max_restarts, cpus_per_worker, store_options) -> None:
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers: must be a positive int, got {n_workers!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts: must be an int >= 0, got {max_restarts!r}")
    if cpus_per_worker is not None and (
        isinstance(cpus_per_worker, bool)
        or not isinstance(cpus_per_worker, int)
        or cpus_per_worker < 1
    ):
        raise ValueError(
            f"cpus_per_worker: must be a positive int or None, got {cpus_per_worker!r}"
        )
    if not callable(problem):
        raise TypeError(
            "problem: expected a callable returning (apply_fn, params, x1, x2), got "
            f"{type(problem).__name__}"
        )
    bad = sorted({"worker", "n_workers", "path", "progress"} & set(store_options))
    if bad:
        raise TypeError(f"store_options: {bad} are set by distribute_kernel itself")


def _worker_cpus(w: int, cpus_per_worker: int | None) -> list[int] | None:
    """Cores ``[w·c, (w+1)·c)`` modulo the machine's, or None (no pinning)."""
    if cpus_per_worker is None:
        return None
    ncpu = os.cpu_count() or 1
    return [(w * cpus_per_worker + c) % ncpu for c in range(cpus_per_worker)]


def _supervise(path, jobs, owned, restart, max_restarts, poll_s, bar) -> None:
    """Polls the jobs until every worker's blocks are done; a job that ended with blocks
    missing is replaced (``restart(w)``) up to ``max_restarts`` times per worker."""
    restarts = dict.fromkeys(jobs, 0)
    while jobs:
        time.sleep(poll_s)
        done = done_blocks(path)
        bar.n = len(done)
        bar.refresh()
        for w, job in list(jobs.items()):
            if not job.done():
                continue
            if owned[w] <= done:
                del jobs[w]
                continue
            if restarts[w] >= max_restarts:
                for other in jobs.values():
                    other.cancel(check=False)
                raise RuntimeError(
                    f"distribute_kernel: worker {w} of {len(owned)} ended with "
                    f"{len(owned[w] - done)} blocks missing after {restarts[w]} "
                    f"restarts; last job {job.job_id}: {_why(job)}"
                )
            restarts[w] += 1
            jobs[w] = restart(w)
    bar.n = len(done_blocks(path))
    bar.refresh()


def worker_states(path: str | os.PathLike) -> dict[int, dict]:
    """The last heartbeat of every worker of the store at ``path`` (host, pid, state, block)."""
    import json

    out = {}
    d = Path(path) / WORKERS_DIR
    if d.exists():
        for f in sorted(d.glob("w*.json")):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            out[int(rec["worker"])] = rec
    return out

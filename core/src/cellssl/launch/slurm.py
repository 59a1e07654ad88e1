"""The ``slurm`` launcher: submit a run as a (multi-node, multi-GPU) SLURM job through submitit.

One task per GPU; each task initialises torch.distributed from the environment submitit exports
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). On preemption or timeout
submitit calls :meth:`cellssl.launch.job.RunJob.checkpoint` and requeues the job, which resumes from
the run directory's last checkpoint. ``cluster: local`` runs the same job with submitit's local
executor (on this machine, one process per task), which is how the path is tested without SLURM.

``%j`` (the job id, as in ``sbatch``) may appear in ``run.output_dir`` and in ``folder``: each submission
then gets its own run directory, which a requeued job (same id) finds again. submitit's stdout/stderr files
go to ``folder`` (default ``<run_dir>/slurm/%j``) and every task also logs to ``<run_dir>/logs/``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cellssl.launch.slurm_config import CLUSTERS, SlurmLauncherConfig

logger = logging.getLogger(__name__)

__all__ = ["CLUSTERS", "SlurmLauncher", "SlurmLauncherConfig", "build_slurm_launcher", "job_folder",
           "resolve_run_dir", "submit", "submit_job_array"]


def job_folder(config: SlurmLauncherConfig, run_dir: Path) -> str:
    """submitit's folder: ``config.folder``, else ``<run_dir>/slurm/%j`` (``<run_dir>/slurm`` when the run
    directory itself holds ``%j``); submitit replaces ``%j`` by the job id."""
    if config.folder:
        return config.folder
    if "%j" in str(run_dir):
        return str(run_dir / "slurm")
    return str(run_dir / "slurm" / "%j")


def resolve_run_dir(run_dir: Path, job_id: str) -> Path:
    """``run_dir`` with ``%j`` replaced by ``job_id``."""
    return Path(str(run_dir).replace("%j", job_id))


def make_executor(config: SlurmLauncherConfig, run_dir: Path) -> Any:
    """A submitit executor with ``config``'s resources; job files go to :func:`job_folder`."""
    import submitit

    folder = job_folder(config, run_dir)
    if config.cluster == "local":  # submitit's local controller creates its folder, as named, without parents
        Path(folder).parent.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=folder, cluster=config.cluster,
                                     slurm_max_num_timeout=config.max_requeues)
    params: dict[str, Any] = {
        "name": config.job_name,
        "nodes": config.nodes,
        "tasks_per_node": config.tasks,
        "cpus_per_task": config.cpus_per_task,
        "timeout_min": config.timeout_min,
    }
    if config.cluster == "slurm":
        params["gpus_per_node"] = config.gpus_per_node
        slurm_specific = {"slurm_partition": config.partition, "slurm_account": config.account,
                          "slurm_qos": config.qos, "slurm_constraint": config.constraint,
                          "mem_gb": config.mem_gb}
        params.update({key: value for key, value in slurm_specific.items() if value is not None})
        if config.setup:
            params["slurm_setup"] = list(config.setup)
        if config.additional_parameters:
            params["slurm_additional_parameters"] = dict(config.additional_parameters)
    executor.update_parameters(**params)
    return executor


def submit(config: SlurmLauncherConfig, config_yaml: str, run_dir: Path, stages: list[str] | None) -> Any:
    """Submit the run and return the submitit job (``job.job_id``, ``job.result()``)."""
    from cellssl.launch.job import RunJob

    executor = make_executor(config, run_dir)
    job = executor.submit(RunJob(config_yaml, stages))
    unresolved = Path(job_folder(config, run_dir))
    if "%j" in str(unresolved) and config.cluster == "slurm":
        _remove_empty_dirs(unresolved)  # submitit created it, literally named, before it knew the job id
    logger.info("submitted job %s (%d node(s) x %d task(s)); run directory %s; logs in %s", job.job_id,
                config.nodes, config.tasks, resolve_run_dir(run_dir, str(job.job_id)), job.paths.folder)
    return job


def submit_job_array(config: SlurmLauncherConfig, run_dir: Path, tasks: Sequence[Callable[[], Any]], *,
                     parallel: int | None = None) -> list[Any]:
    """Submit each of ``tasks`` as one job of a job array, with the resources of ``config``.

    For workflows whose unit of work is not a whole run (one task per chunk of plates, say). Each task is a
    picklable callable without arguments; it runs once, in its own process (a SLURM array element, or a local
    process with ``cluster: local``); a task that returns a ``submitit.helpers.DelayedSubmission`` from its
    ``checkpoint()`` method is requeued on preemption or timeout. Job files and logs go to
    :func:`job_folder` (``<run_dir>/slurm/<job id>`` by default).

    :param config: the ``slurm`` launcher's settings (``launcher.settings`` of a plan, or built in code).
    :param run_dir: the run directory the job folder is derived from.
    :param tasks: the callables; none: nothing is submitted.
    :param parallel: at most this many tasks of the array run at once (SLURM ``--array=...%N``; ignored by
        ``cluster: local``, which starts them all).
    :return: the submitit jobs, in the order of ``tasks`` (``job.job_id``, ``job.result()``, ``job.paths.folder``).
    :raises ValueError: for ``parallel < 1``.
    """
    if parallel is not None and parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if not tasks:
        return []
    executor = make_executor(config, run_dir)
    if parallel is not None and config.cluster == "slurm":
        executor.update_parameters(slurm_array_parallelism=int(parallel))
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    logger.info("submitted %d task(s) as a job array (%d node(s) x %d task(s) each); logs in %s", len(jobs),
                config.nodes, config.tasks, job_folder(config, run_dir))
    return jobs


def _remove_empty_dirs(path: Path) -> None:
    """Remove ``path`` and its parents up to the first one holding '%j' in its name, when empty."""
    for folder in [path, *path.parents]:
        if "%j" not in str(folder):
            return
        try:
            folder.rmdir()
        except OSError:
            return


def preempt_local_job(job: Any, signum: int | None = None) -> list[int]:
    """Send the preemption signal to the task processes of a ``cluster: local`` job, as SLURM does before a
    preemption or timeout: each task's submitit handler then calls :meth:`RunJob.checkpoint` and rank 0 exits
    with the requeue code, and the local controller starts the tasks again.

    (submitit's ``LocalJob._interrupt()`` signals the controller process instead, which has no handler for it:
    the controller dies, the tasks keep running unsupervised and nothing is requeued.)

    :param job: the submitit ``LocalJob``. :param signum: default ``SIGUSR2`` (submitit's preemption signal).
    :return: the process ids signalled.
    :raises RuntimeError: if the job has no running tasks (Linux ``/proc`` is used to find them).
    """
    process = getattr(job, "_process", None)
    if process is None or process.poll() is not None:
        raise RuntimeError(f"job {job.job_id} is not running in this session")
    signum = signum if signum is not None else getattr(signal, "SIGUSR2", signal.SIGTERM)
    tasks = _task_processes(process.pid)
    if not tasks:
        raise RuntimeError(f"job {job.job_id} has no task process yet")
    for pid in tasks:
        os.kill(pid, signum)
    return tasks


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _task_processes(controller: int) -> list[int]:
    """Descendants of the controller started as submitit tasks (not their own children, e.g. data workers)."""
    found, todo = [], _children(controller)
    while todo:
        pid = todo.pop()
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"SUBMITIT_LOCAL_GLOBALID=" in environ:
            found.append(pid)
        else:
            todo.extend(_children(pid))
    return sorted(found)


class SlurmLauncher:
    """``launcher: {name: slurm}``: checks the plan, then submits the run as a SLURM job (or submitit's local
    executor with ``cluster: local``); with ``wait`` it blocks and reports the job's result."""

    name = "slurm"

    def __init__(self, config: SlurmLauncherConfig) -> None:
        self.config = config

    def launch(self, plan: Any, stages: list[str] | None, *, restart: bool = False) -> Any:
        from omegaconf import OmegaConf

        from cellssl.errors import CellsslError, ConfigError
        from cellssl.launch.launcher import LaunchResult
        from cellssl.plan.checks import check_plan
        from cellssl.plan.run_dir import prepare_run_dir

        check_plan(plan)
        output_dir = OmegaConf.select(plan.config, "run.output_dir")
        if not output_dir:
            raise ConfigError("run.output_dir", "is required with the slurm launcher (the job writes there; `%j` in "
                                                "it is replaced by the job id), e.g. run.output_dir=runs/vitl_%j")
        run_dir = Path(str(output_dir))
        if "%j" not in str(run_dir):
            prepare_run_dir(plan, restart=restart, write=False)  # refuse a mismatched run directory before submitting
            run_dir.mkdir(parents=True, exist_ok=True)
        job_config = plan.config.copy()
        job_config.launcher = None  # the job itself runs locally
        job = submit(self.config, OmegaConf.to_yaml(job_config, resolve=True), run_dir, stages)
        run_dir = resolve_run_dir(run_dir, str(job.job_id))
        if self.config.wait:
            try:
                job.results()
            except Exception as exc:
                raise CellsslError(f"job {job.job_id} failed: {exc}. Logs: {job.paths.folder} and "
                                   f"{run_dir / 'logs'}") from exc
        return LaunchResult(run_dir, None, job)


def build_slurm_launcher(config: SlurmLauncherConfig) -> SlurmLauncher:
    """Factory of the ``slurm`` launcher."""
    return SlurmLauncher(config)

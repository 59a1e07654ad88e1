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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm", "local")


@dataclass
class SlurmLauncherConfig:
    """``launcher: {name: slurm, ...}``.

    :ivar nodes: number of nodes.
    :ivar gpus_per_node: GPUs per node; one task (process) per GPU.
    :ivar tasks_per_node: processes per node (default: ``gpus_per_node``, at least 1).
    :ivar cpus_per_task: CPU cores per process (DataLoader workers + the main process).
    :ivar mem_gb: memory per node in GB (``None``: the partition's default).
    :ivar partition: SLURM partition. ``account``, ``qos``, ``constraint``: the usual SLURM options.
    :ivar timeout_min: wall-clock limit of one job; a job that reaches it is requeued.
    :ivar max_requeues: how many timeouts the run may survive (preemptions are not counted).
    :ivar folder: job folder for submitit's files and logs; ``%j`` is replaced by the job id.
        Default: ``<run_dir>/slurm/%j``.
    :ivar job_name: SLURM job name.
    :ivar setup: shell lines run before the job (e.g. ``module load cuda``).
    :ivar additional_parameters: extra ``#SBATCH`` options (``{mail-type: END}``).
    :ivar cluster: ``slurm``, or ``local`` to run the job with submitit's local executor.
    :ivar wait: block until the job finishes and report its result.
    """

    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None
    cpus_per_task: int = 8
    mem_gb: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 60
    max_requeues: int = 3
    folder: str | None = None
    job_name: str = "cellssl"
    setup: list[str] = field(default_factory=list)
    additional_parameters: dict[str, str] = field(default_factory=dict)
    cluster: str = "slurm"
    wait: bool = False

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster must be one of {CLUSTERS}, got {self.cluster!r}")
        for name in ("nodes", "timeout_min", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0 or self.max_requeues < 0:
            raise ValueError("gpus_per_node and max_requeues must be >= 0")

    @property
    def tasks(self) -> int:
        """Processes per node."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)


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

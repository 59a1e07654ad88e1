"""The ``launcher: {name: slurm, ...}`` parameters (:class:`SlurmLauncherConfig`), importable without submitit."""

from __future__ import annotations

from dataclasses import dataclass, field

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

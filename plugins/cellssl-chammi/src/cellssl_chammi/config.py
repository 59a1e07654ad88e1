"""Parameters of the plugin's datasets, evaluator and download (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellssl_chammi.subsets import SUBSET_KEYS, TASKS, TRAIN

CHECK_FILES = ("exists", "decode", "none")
CLASSIFIERS = ("knn", "linear", "sgd")
KNN_METRICS = ("l2", "cosine")
ZENODO_RECORD = "https://zenodo.org/records/7988357"
DEFAULT_URL = f"{ZENODO_RECORD}/files/CHAMMI.zip?download=1"


@dataclass
class ChammiSubsetConfig:
    """The YAML block ``data: {name: chammi_wtc | chammi_hpa | chammi_cp, root: ...}``.

    :ivar root: the CHAMMI folder (the one holding ``Allen/``, ``HPA/``, ``CP/``), or the folder the
        download was unpacked into (then its ``CHAMMI/`` sub-folder is used). Required.
    :ivar split: keep rows whose ``train_test_split`` is this (``Train``, ``Task_one`` ...); ``None``:
        every row.
    :ivar task: keep rows whose boolean column ``task`` is true (``Task_two`` ...); ``None``: no filter.
    :ivar folder: the subset's folder under the root (default: the published name, e.g. ``Allen``).
    :ivar channels: channel names overriding the published ones (same count, tape order).
    :ivar bit_depth: bit depth of the tapes (CHAMMI publishes 8-bit images; ``dtype`` follows the file).
    :ivar check_files: ``exists`` (every file exists, the first one is decoded), ``decode`` (every image
        is decoded and checked) or ``none``.
    :ivar limit: keep only the first ``limit`` rows after filtering.
    """

    root: str
    split: str | None = None
    task: str | None = None
    folder: str | None = None
    channels: list[str] = field(default_factory=list)
    bit_depth: str = "dtype"
    check_files: str = "exists"
    limit: int | None = None

    def __post_init__(self) -> None:
        if not str(self.root).strip():
            raise ValueError("root is required: the CHAMMI folder (holding Allen/, HPA/ and CP/)")
        if self.split is not None and self.split not in (TRAIN, *TASKS):
            raise ValueError(f"split must be one of {(TRAIN, *TASKS)} or null, got {self.split!r}")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} or null, got {self.task!r}")
        if self.check_files not in CHECK_FILES:
            raise ValueError(f"check_files must be one of {CHECK_FILES}, got {self.check_files!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive integer or null, got {self.limit}")


@dataclass
class ChammiDatasetConfig(ChammiSubsetConfig):
    """The YAML block ``data: {name: chammi, root: ..., subset: wtc}``: one subset chosen by name.

    :ivar subset: ``wtc``, ``hpa`` or ``cp``.
    """

    subset: str = "wtc"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subset not in SUBSET_KEYS:
            raise ValueError(f"subset must be one of {SUBSET_KEYS}, got {self.subset!r}")


@dataclass
class ChammiLinearConfig:
    """The linear protocol: a grid of linear heads (``cellssl.eval.engines.linear_probe.fit_linear_probe``), the head
    chosen on a validation split carved from the training rows (never on a task's rows).

    :ivar learning_rates: the grid's learning rates (empty: cellssl's default linear-probe grid).
    :ivar weight_decays: the grid's weight decays (empty: cellssl's default).
    :ivar epochs: passes over the training rows. :ivar batch_size: rows per step.
    :ivar val_fraction: fraction of the training rows held out to choose the head.
    :ivar class_balance: weight the loss by inverse class frequency.
    :ivar seed: seed of the validation draw and of the batches.
    """

    learning_rates: list[float] = field(default_factory=list)
    weight_decays: list[float] = field(default_factory=list)
    epochs: int = 10
    batch_size: int = 256
    val_fraction: float = 0.2
    class_balance: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learning_rates and min(self.learning_rates) <= 0:
            raise ValueError(f"linear.learning_rates must be values > 0, got {self.learning_rates}")
        if self.weight_decays and min(self.weight_decays) < 0:
            raise ValueError(f"linear.weight_decays must be values >= 0, got {self.weight_decays}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"linear.epochs and linear.batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"linear.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class ChammiSgdConfig:
    """MorphEm's ``sgd`` classifier: ``sklearn.linear_model.SGDClassifier(alpha=0.001, max_iter=100)`` on the raw
    embeddings (hinge loss, L2 penalty, one-vs-rest), fitted once per seed. MorphEm leaves it unseeded;
    cellssl fits it once per seed of ``seeds`` (``random_state``) and reports the mean and the population
    standard deviation over the seeds.

    :ivar alpha: regularisation strength (MorphEm: 0.001). :ivar max_iter: epochs (MorphEm: 100).
    :ivar seeds: ``random_state`` of each fit; the table holds the mean over them.
    """

    alpha: float = 0.001
    max_iter: int = 100
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"sgd.alpha must be > 0, got {self.alpha}")
        if self.max_iter < 1:
            raise ValueError(f"sgd.max_iter must be >= 1, got {self.max_iter}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"sgd.seeds must be a non-empty list of distinct integers, got {self.seeds}")


@dataclass
class ChammiEvaluatorConfig:
    """The YAML block ``eval: [{name: chammi, ...}]``: the full CHAMMI protocol.

    :ivar root: the CHAMMI folder; empty: the run's ``data.root``.
    :ivar subsets: subsets to evaluate (a missing one leaves its columns empty).
    :ivar classifiers: ``knn`` (faiss 1-NN), ``linear`` (linear probe) and / or ``sgd`` (MorphEm's
        ``SGDClassifier``, mean +/- std over ``sgd.seeds``).
    :ivar knn_metric: ``l2`` (the benchmark's default) or ``cosine``.
    :ivar leave_out_tasks: subset -> its novel-class task, scored leave-one-group-out.
    :ivar group_columns: subset -> the metadata column whose values are the groups of that task.
    :ivar linear: settings of the linear protocol.
    :ivar sgd: settings of the ``sgd`` classifier.
    :ivar bit_depth: bit depth of the tapes. :ivar check_files: as in the datasets.
    :ivar reuse_embeddings: reuse the run's ``embeddings/`` when they hold a whole subset, and the
        per-subset embeddings cached in ``<run_dir>/chammi_embeddings/`` when the model is unchanged.
    :ivar per_class_report: keep per-class F1 in the JSON result.
    :ivar num_threads: faiss threads (default: the CPUs available).
    """

    root: str = ""
    subsets: list[str] = field(default_factory=lambda: list(SUBSET_KEYS))
    classifiers: list[str] = field(default_factory=lambda: ["knn"])
    knn_metric: str = "l2"
    leave_out_tasks: dict[str, str] = field(default_factory=lambda: {"hpa": "Task_three", "cp": "Task_four"})
    group_columns: dict[str, str] = field(default_factory=lambda: {"hpa": "cell_type", "cp": "Plate"})
    linear: ChammiLinearConfig = field(default_factory=ChammiLinearConfig)
    sgd: ChammiSgdConfig = field(default_factory=ChammiSgdConfig)
    bit_depth: str = "dtype"
    check_files: str = "exists"
    reuse_embeddings: bool = True
    per_class_report: bool = False
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.linear, dict):  # built from a plain mapping rather than by omegaconf
            self.linear = ChammiLinearConfig(**self.linear)
        if isinstance(self.sgd, dict):
            self.sgd = ChammiSgdConfig(**self.sgd)
        if not self.subsets or any(s not in SUBSET_KEYS for s in self.subsets):
            raise ValueError(f"subsets must name some of {SUBSET_KEYS}, got {self.subsets}")
        if len(set(self.subsets)) != len(self.subsets):
            raise ValueError(f"subsets lists a subset twice: {self.subsets}")
        if not self.classifiers or any(c not in CLASSIFIERS for c in self.classifiers):
            raise ValueError(f"classifiers must name some of {CLASSIFIERS}, got {self.classifiers}")
        if len(set(self.classifiers)) != len(self.classifiers):
            raise ValueError(f"classifiers lists a classifier twice: {self.classifiers}")
        if self.knn_metric not in KNN_METRICS:
            raise ValueError(f"knn_metric must be one of {KNN_METRICS}, got {self.knn_metric!r}")
        for name, mapping in (("leave_out_tasks", self.leave_out_tasks), ("group_columns", self.group_columns)):
            unknown = [k for k in mapping if k not in SUBSET_KEYS]
            if unknown:
                raise ValueError(f"{name} has unknown subsets {unknown}; subsets are {SUBSET_KEYS}")
        bad_tasks = {k: v for k, v in self.leave_out_tasks.items() if v not in TASKS}
        if bad_tasks:
            raise ValueError(f"leave_out_tasks values must be tasks {TASKS}, got {bad_tasks}")
        missing_groups = [k for k in self.leave_out_tasks if not self.group_columns.get(k)]
        if missing_groups:
            raise ValueError(f"group_columns must name the group column of the leave-out subsets {missing_groups}")
        if self.check_files not in CHECK_FILES:
            raise ValueError(f"check_files must be one of {CHECK_FILES}, got {self.check_files!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")


@dataclass
class ChammiDownloadConfig:
    """Options of ``cellssl data download chammi --to DIR [key=value ...]``.

    :ivar url: the archive's URL (a mirror can be given here).
    :ivar sha256: the archive's sha256, if you have it from a trusted source (checked when set).
    :ivar size: the archive's size in bytes, if known (checked when set).
    :ivar unpack: unzip the archive after it is verified.
    """

    url: str = DEFAULT_URL
    sha256: str | None = None
    size: int | None = None
    unpack: bool = True

    def __post_init__(self) -> None:
        if not self.url.startswith(("https://", "http://", "file://")):
            raise ValueError(f"url must start with https://, http:// or file://, got {self.url!r}")
        if self.sha256 is not None:
            self.sha256 = self.sha256.strip().lower()
            if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
                raise ValueError(f"sha256 must be 64 hex digits, got {self.sha256!r}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be a positive number of bytes or null, got {self.size}")

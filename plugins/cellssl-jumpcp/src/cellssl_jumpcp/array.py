"""JUMP plates as a job array: one task per chunk of plates, each plate embedded into its own run directory.

Layout of an array run directory ``<run>`` (``run.output_dir``)::

    <run>/array.json                         the plate list and its chunks (written at submission)
    <run>/channel_stats.json                 channel statistics shared by every plate (``normalize.mode: dataset``)
    <run>/nuclei/                            segmented nucleus centres per plate (``data.nuclei_cache``, jump_cells)
    <run>/plates/<plate>/                    one core run per plate: config.yaml, embeddings/ (shards + manifest)
    <run>/plates/<plate>/intensity/          per-channel intensity statistics of the same cells (baseline)
    <run>/plates/<plate>/plate_done.json     written last, once the plate's embedding manifest verified
    <run>/slurm/<job id>/                    submitit's files and logs of each task

A task (:class:`PlateChunkJob`) runs the core's embed stage (:func:`cellssl.api.launch` of the plan with
``["embed"]``) for each plate of its chunk, with ``data.plates: [<plate>]`` and ``run.output_dir:
<run>/plates/<plate>``. A plate is *done* only when its ``plate_done.json`` names the same plate config and its
embedding folder is read by :func:`cellssl.api.read_embeddings` (complete manifest, every shard listed and
unchanged, same fingerprint): a done plate is skipped by every later submission, an unfinished one is run
again (the embed stage keeps its complete shards). A plate that fails does not stop the other plates of its
chunk; the task then fails, naming the plates. The final merge (:mod:`cellssl_jumpcp.merge`) needs every plate.

Channel statistics must be the same for every plate, so ``normalize.mode: dataset`` needs either
``normalize.stats_path`` or ``stats_plates`` (the submitting process computes them once on those plates, into
``<run>/channel_stats.json``, by :func:`cellssl.api.run_channel_stats`, and every plate reads that file).

Tasks are submitted with :func:`cellssl.api.submit_job_array`, with the ``slurm`` launcher's settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from cellssl.api import CellsslError, ConfigError, DataError

if TYPE_CHECKING:
    from cellssl.api import SlurmLauncherConfig

logger = logging.getLogger(__name__)

PLATES_DIR = "plates"
DONE_FILE = "plate_done.json"
ARRAY_FILE = "array.json"
INTENSITY_DIR = "intensity"
EMBEDDINGS_DIR = "embeddings"
NUCLEI_DIR = "nuclei"
JUMP_DATASETS = ("jump_cells", "jump_sites")


def plate_dir(run_dir: Path, plate: str) -> Path:
    """``<run>/plates/<plate>``."""
    return Path(run_dir) / PLATES_DIR / str(plate)


def chunks(plates: Sequence[str], size: int) -> list[list[str]]:
    """``plates`` in consecutive chunks of at most ``size`` (the last one shorter).

    :raises ValueError: for ``size < 1``.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [list(plates[i : i + size]) for i in range(0, len(plates), size)]


def plate_config(config: DictConfig, plate: str, run_dir: Path) -> DictConfig:
    """The core run config of one plate: ``data.plates: [plate]``, ``run.output_dir: <run>/plates/<plate>``,
    no launcher and no evaluators (the merge step evaluates all plates at once)."""
    out = config.copy()
    OmegaConf.update(out, "data.plates", [str(plate)], merge=False)
    OmegaConf.update(out, "run.output_dir", str(plate_dir(run_dir, plate)))
    out.launcher = None
    out.eval = []
    return out


def config_digest(config: DictConfig) -> str:
    """SHA-256 (hex) of a config, resolved, as canonical JSON (sorted keys, no spaces; values JSON cannot hold
    as their text): what a plate's ``plate_done.json`` records. Independent of key order."""
    text = json.dumps(OmegaConf.to_container(config, resolve=True), sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def uses_intensity_baseline(config: DictConfig) -> bool:
    """Whether a ``jump_map`` entry of ``eval:`` asks for the intensity baseline."""
    return any(str(block.get("name")) == "jump_map" and bool(block.get("intensity_baseline", False))
               for block in (config.get("eval") or []))


def plate_status(run_dir: Path, plate: str, digest: str | None = None) -> str | None:
    """Why ``plate`` is not done (``None`` when it is): see the module docstring.

    :param digest: the plate config's :func:`config_digest` the plate must have been embedded with (``None``: any).
    """
    from cellssl.api import read_embeddings

    folder = plate_dir(run_dir, plate)
    marker = folder / DONE_FILE
    if not marker.is_file():
        return "not finished"
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{marker} is unreadable ({exc})"
    if digest is not None and record.get("config_digest") != digest:
        return "embedded with another config"
    try:
        for sub in [EMBEDDINGS_DIR, *([INTENSITY_DIR] if record.get("intensity") else [])]:
            read_embeddings(folder / sub, expected_fingerprint=record.get("fingerprint"), lazy=True)  # verifies
    except DataError as exc:
        return str(exc)
    return None


def list_plates(config: DictConfig) -> list[str]:
    """The plates of the run's JUMP source: its load_data tables after ``data.batches`` / ``data.plates``, sorted.

    Validates the config (no stage required) and reads only the load_data tables (no image).

    :raises ConfigError: for an invalid config, or when ``data`` is not a JUMP dataset.
    :raises DataError: see :class:`cellssl_jumpcp.source.JumpSource` (missing tables, unknown plates).
    """
    from cellssl.api import build_run_plan
    from cellssl_jumpcp.loaddata import find_tables, read_load_data

    spec = build_run_plan(config, []).data
    if spec is None:
        raise ConfigError("data", f"is required: a plate array runs {' or '.join(JUMP_DATASETS)}")
    if spec.component.name not in JUMP_DATASETS:
        raise ConfigError("data.name", f"is '{spec.component.name}'; a plate array runs {' or '.join(JUMP_DATASETS)}")
    cfg = spec.component.config
    root = Path(cfg.root).expanduser()
    stem = "load_data_with_illum" if cfg.illum else "load_data"
    frame = read_load_data(find_tables(root, cfg.load_data, stem, f"{stem} tables"))
    if cfg.batches:
        frame = frame[frame["Metadata_Batch"].isin([str(b) for b in cfg.batches])]
    present = sorted({str(p) for p in frame["Metadata_Plate"]})
    if cfg.plates:
        absent = [str(p) for p in cfg.plates if str(p) not in present]
        if absent:
            raise DataError(f"plates {absent} (data.plates) are not in the load_data tables under {root}; plates "
                            f"there: {present[:20]}")
        return sorted({str(p) for p in cfg.plates})
    if not present:
        raise DataError(f"the load_data tables under {root} hold no plate of data.batches {list(cfg.batches)}")
    return present


def shared_stats(config: DictConfig, run_dir: Path, plates: Sequence[str]) -> Path:
    """Channel statistics of the dataset restricted to ``plates`` -> ``<run>/channel_stats.json`` (reused when it was
    computed from the same inputs, as a single run reuses its own; :func:`cellssl.api.run_channel_stats`)."""
    from cellssl.api import build_run_plan, run_channel_stats

    stats_config = config.copy()
    OmegaConf.update(stats_config, "data.plates", [str(p) for p in plates], merge=False)
    OmegaConf.update(stats_config, "run.output_dir", str(run_dir))
    stats_config.launcher = None
    return run_channel_stats(build_run_plan(stats_config, ["embed"]))


@dataclass
class PlateArray:
    """A validated plate array, ready to submit (:func:`prepare_array`).

    :ivar config: the run config every plate config is derived from (``normalize.stats_path`` filled in).
    :ivar run_dir: ``run.output_dir``. :ivar plates: every plate of the array, sorted.
    :ivar todo: the chunks of the plates not done yet (what :func:`submit_array` submits).
    :ivar done: plates already done (skipped). :ivar launcher: the ``slurm`` launcher settings of the tasks.
    """

    config: DictConfig
    run_dir: Path
    plates: list[str]
    todo: list[list[str]]
    done: list[str]
    launcher: SlurmLauncherConfig


def prepare_array(config: DictConfig, plates: Sequence[str] | None = None, chunk: int = 1, *,
                  local: bool = False, stats_plates: Sequence[str] | None = None) -> PlateArray:
    """Validate the run config (every section, every ``eval[i]``, the launcher) and plan the array.

    :param plates: the plates to run (default: every plate of the source, see :func:`list_plates`).
    :param chunk: plates per task. :param local: run the tasks with submitit's local executor (this machine).
    :param stats_plates: with ``normalize.mode: dataset`` and no ``normalize.stats_path``: the plates the shared
        channel statistics are computed on (in this process, before submitting).
    :raises ConfigError: for an invalid config, a launcher that is neither ``local`` nor ``slurm``, more than one
        process per task, a config that trains (the array only embeds: set ``weights``), or dataset
        normalisation without shared statistics.
    :raises DataError: for unknown plates or unreadable load_data tables.
    """
    from cellssl.api import SlurmLauncherConfig, build_run_plan

    plan = build_run_plan(config)
    if plan.data is None or plan.data.component.name not in JUMP_DATASETS:
        raise ConfigError("data.name", f"a plate array embeds a JUMP dataset ({', '.join(JUMP_DATASETS)})")
    if plan.backbone is None:
        raise ConfigError("backbone", "is required: the array embeds every plate with it")
    if plan.objective is not None and plan.weights is None:
        raise ConfigError("weights", "is required: a plate array only embeds, so it needs the trained backbone "
                                     "(e.g. weights=runs/train/teacher_backbone.pt) instead of training per plate")
    if not any(e.name == "jump_map" for e in plan.evaluators):
        raise ConfigError("eval", "lists no jump_map evaluator; the array's merge step scores the plates with it")
    settings = plan.launcher.settings if plan.launcher.name == "slurm" else SlurmLauncherConfig()
    if local:
        settings = replace(settings, cluster="local")
    if settings.nodes != 1 or settings.tasks != 1:
        raise ConfigError("launcher", f"asks for {settings.nodes} node(s) x {settings.tasks} task(s); a plate task is "
                                      "one process: set launcher.nodes=1, launcher.tasks_per_node=1")
    run_dir = plan.run_dir.resolve()  # the tasks may start in another folder
    config = config.copy()
    OmegaConf.update(config, "run.output_dir", str(run_dir))
    all_plates = list_plates(config)
    chosen = sorted({str(p) for p in plates}) if plates else all_plates
    unknown = [p for p in chosen if p not in all_plates]
    if unknown:
        raise DataError(f"plates {unknown} (--plates) are not among the source's plates {all_plates[:20]}")
    component = plan.data.component
    if component.name == "jump_cells" and not component.config.locations and not component.config.nuclei_cache:
        OmegaConf.update(config, "data.nuclei_cache", str(run_dir / NUCLEI_DIR))  # segment each site once
    if plan.normalize.mode == "dataset" and not plan.normalize.stats_path:
        if not stats_plates:
            raise ConfigError("normalize.stats_path",
                              "is required by a plate array with normalize.mode: dataset (each plate would "
                              "otherwise be normalised with its own statistics); point it at a channel_stats.json "
                              "(a training run stores one), pass --stats-plates P1 P2 to compute it once on those "
                              "plates, or use normalize.mode=per_image")
        unknown = [p for p in stats_plates if str(p) not in all_plates]
        if unknown:
            raise DataError(f"plates {unknown} (--stats-plates) are not among the source's plates {all_plates[:20]}")
        OmegaConf.update(config, "normalize.stats_path", str(shared_stats(config, run_dir, stats_plates)))
    done, todo = [], []
    for plate in chosen:
        reason = plate_status(run_dir, plate, config_digest(plate_config(config, plate, run_dir)))
        (todo if reason else done).append(plate)
        if reason and reason != "not finished":
            logger.info("plate %s will be embedded again: %s", plate, reason)
    return PlateArray(config, run_dir, chosen, chunks(todo, chunk), done, settings)


class PlateChunkJob:
    """The task of one chunk: embed each plate not done yet, verify it, mark it done (see the module docstring).

    Carries the config as YAML text only, so submitit can requeue it as it is.

    :param config_yaml: the array's run config (resolved). :param plates: the chunk.
    :param restart: let a plate's run directory that holds another config's outputs start over.
    :param attempt: 1 for the first submission, +1 at every requeue.
    """

    def __init__(self, config_yaml: str, plates: Sequence[str], restart: bool = False, attempt: int = 1) -> None:
        self.config_yaml = config_yaml
        self.plates = [str(p) for p in plates]
        self.restart = restart
        self.attempt = attempt

    def __call__(self) -> dict[str, str]:
        """Run the chunk.

        :return: ``{plate: "done" | "skipped"}``.
        :raises CellsslError: after the chunk's other plates ran, naming every plate that failed and why.
        """
        if not logging.getLogger().handlers:  # a submitit task: log to its stderr file
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        config = OmegaConf.create(self.config_yaml)
        run_dir = Path(str(config.run.output_dir))
        outcome: dict[str, str] = {}
        failed: dict[str, str] = {}
        for plate in self.plates:
            one = plate_config(config, plate, run_dir)
            digest = config_digest(one)
            if plate_status(run_dir, plate, digest) is None:
                logger.info("plate %s is done; skipped", plate)
                outcome[plate] = "skipped"
                continue
            try:
                embed_plate(one, digest, uses_intensity_baseline(config), restart=self.restart)
            except CellsslError as exc:
                logger.error("plate %s failed: %s", plate, exc)
                failed[plate] = str(exc)
                continue
            outcome[plate] = "done"
        if failed:
            shown = "; ".join(f"{plate}: {reason}" for plate, reason in failed.items())
            raise CellsslError(f"{len(failed)} of {len(self.plates)} plate(s) failed: {shown}. The plates done are "
                               "kept; fix the cause and submit the array again to run the others.")
        return outcome

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or timeout: requeue the chunk (done plates are then skipped)."""
        import submitit

        logger.warning("preempted or timed out (attempt %d): requeueing plates %s", self.attempt, self.plates)
        return submitit.helpers.DelayedSubmission(
            PlateChunkJob(self.config_yaml, self.plates, self.restart, self.attempt + 1))


def embed_plate(config: DictConfig, digest: str, intensity: bool, *, restart: bool = False) -> Path:
    """Embed one plate (the core's embed stage), verify its manifest, write the intensity baseline, mark it done.

    :param config: the plate's run config (:func:`plate_config`). :param digest: its :func:`config_digest`.
    :param intensity: also store the per-channel intensity statistics of its cells (``<plate dir>/intensity``).
    :return: the plate's run directory.
    :raises CellsslError: from the run (invalid data, unreadable images) or when the written set does not verify.
    """
    from cellssl.api import atomic_write_json, build_run_plan, launch, plan_dataset, read_embeddings

    started = time.time()
    plan = build_run_plan(config, ["embed"])
    result = launch(plan, ["embed"], restart=restart)  # the plate config's launcher is local: runs here
    folder = Path(result.outputs["embed"])
    manifest = read_embeddings(folder, lazy=True).manifest  # verifies: complete, every shard listed and unchanged
    fingerprint = manifest.get("fingerprint")
    if intensity:
        write_intensity(plan_dataset(plan), result.run_dir / INTENSITY_DIR, fingerprint or "")
    record = {"plate": str(config.data.plates[0]), "config_digest": digest, "fingerprint": fingerprint,
              "rows": int(manifest["rows"]), "intensity": intensity, "seconds": round(time.time() - started, 3)}
    atomic_write_json(result.run_dir / DONE_FILE, record)
    logger.info("plate %s done: %d cells in %.1f s", record["plate"], record["rows"], record["seconds"])
    return result.run_dir


def write_intensity(dataset: Any, folder: Path, fingerprint: str) -> Path:
    """Per-channel intensity statistics of every sample (:func:`cellssl_jumpcp.evaluator.intensity_features`),
    written as an embedding set (shards + manifest) with the dataset's metadata."""
    from cellssl.api import EmbeddingWriter
    from cellssl_jumpcp.evaluator import intensity_features

    features = intensity_features(dataset)
    with EmbeddingWriter(folder, overwrite=True, fingerprint=fingerprint, expected_rows=len(features),
                         info={"features": "per-channel mean, std, p10, p90"}) as writer:
        writer.write(dataset.metadata, features)
    return folder


def submit_array(array: PlateArray, *, restart: bool = False, parallel: int | None = None) -> list[Any]:
    """Submit one task per chunk of ``array.todo`` as a job array; write ``<run>/array.json``.

    :param parallel: at most this many tasks at once (SLURM ``--array=...%N``).
    :return: the submitit jobs (``[]`` when every plate is done).
    :raises ValueError: for ``parallel < 1``.
    """
    from cellssl.api import atomic_write_json, submit_job_array

    array.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(array.run_dir / ARRAY_FILE, {"plates": array.plates, "done": array.done, "todo": array.todo,
                                                   "config_digest": config_digest(array.config)})
    if not array.todo:
        logger.info("every plate of %s is done; nothing to submit", array.run_dir)
        return []
    config_yaml = OmegaConf.to_yaml(array.config, resolve=True)
    jobs = submit_job_array(array.launcher, array.run_dir,
                            [PlateChunkJob(config_yaml, plates, restart) for plates in array.todo], parallel=parallel)
    logger.info("submitted %d task(s) for %d plate(s) (%d done before); logs in %s", len(jobs),
                sum(len(c) for c in array.todo), len(array.done), array.run_dir / "slurm")
    return jobs


def wait_array(jobs: Sequence[Any]) -> dict[str, str]:
    """Wait for every task; return ``{plate: "done" | "skipped"}``.

    :raises CellsslError: naming each failed task, its plates, its error and its log folder (after all finished).
    """
    outcome: dict[str, str] = {}
    failures = []
    for job in jobs:
        try:
            outcome.update(job.result())
        except Exception as exc:  # submitit wraps the task's exception (FailedJobError / UncompletedJobError)
            message = str(exc).strip().splitlines()
            reason = next((line for line in reversed(message) if "CellsslError" in line or "Error" in line),
                          message[-1] if message else type(exc).__name__)
            failures.append(f"task {job.job_id} ({reason.strip()}; logs: {job.paths.folder})")
    if failures:
        raise CellsslError(f"{len(failures)} of {len(jobs)} array task(s) failed: " + "; ".join(failures) +
                           ". Plates that finished are kept: submit the array again to run the rest.")
    return outcome

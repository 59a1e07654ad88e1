"""The three CHAMMI subsets as published, and the nine task columns of the benchmark table.

Standard library only (imported by the plugin's entry point).

Layout of a CHAMMI download (the folder ``data.root`` points at)::

    CHAMMI/
      Allen/enriched_meta.csv     WTC-11 (the folder keeps its original name, "Allen"); .ome.tiff tapes
      HPA/enriched_meta.csv       Human Protein Atlas; .png tapes
      CP/enriched_meta.csv        Cell Painting; .png tapes

Every image is one grey "tape" ``(H, W * C)`` with its channels side by side; the ``channel_width``
column gives ``W``. ``file_path`` is relative to the CHAMMI folder. Channel names follow the published
order, mapped to cellssl's shared vocabulary: the published "nucleus" is ``dna``.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS: tuple[str, ...] = ("Task_one", "Task_two", "Task_three", "Task_four")
TRAIN = "Train"
SPLIT_COLUMN = "train_test_split"
LABEL_COLUMN = "Label"
PATH_COLUMN = "file_path"
ID_COLUMN = "ID"
ROW_KEY_COLUMNS: tuple[str, ...] = (ID_COLUMN, "Key", "file_path")
"""Columns that identify a row, where present (``ID``; some releases name it ``Key``; always ``file_path``)."""
WIDTH_COLUMN = "channel_width"
META_FILE = "enriched_meta.csv"


@dataclass(frozen=True)
class Subset:
    """One CHAMMI subset.

    :ivar key: ``wtc``, ``hpa`` or ``cp`` (the ``subset`` config value, and dataset ``chammi_<key>``).
    :ivar title: the name used in the benchmark table (``WTC``, ``HPA``, ``CP``).
    :ivar folders: folder names tried under the CHAMMI root, in order.
    :ivar published_channels: the channel names of the publication, in tape order.
    :ivar channels: the same channels in cellssl's vocabulary.
    :ivar tasks: the subset's tasks (boolean columns of ``enriched_meta.csv``), in table order.
    :ivar leave_out_task: the novel-class task scored leave-one-group-out, if any.
    :ivar group_column: the metadata column whose values are the groups of that task.
    """

    key: str
    title: str
    folders: tuple[str, ...]
    published_channels: tuple[str, ...]
    channels: tuple[str, ...]
    tasks: tuple[str, ...]
    leave_out_task: str | None = None
    group_column: str | None = None


SUBSETS: dict[str, Subset] = {
    "wtc": Subset(
        key="wtc", title="WTC", folders=("Allen", "WTC", "WTC-11", "WTC11"),
        published_channels=("nucleus", "membrane", "protein"), channels=("dna", "membrane", "protein"),
        tasks=("Task_one", "Task_two"),
    ),
    "hpa": Subset(
        key="hpa", title="HPA", folders=("HPA",),
        published_channels=("microtubules", "protein", "nucleus", "er"),
        channels=("microtubules", "protein", "dna", "er"),
        tasks=("Task_one", "Task_two", "Task_three"), leave_out_task="Task_three", group_column="cell_type",
    ),
    "cp": Subset(
        key="cp", title="CP", folders=("CP",),
        published_channels=("nucleus", "er", "rna", "golgi", "mito"), channels=("dna", "er", "rna", "golgi", "mito"),
        tasks=("Task_one", "Task_two", "Task_three", "Task_four"), leave_out_task="Task_four", group_column="Plate",
    ),
}

SUBSET_KEYS: tuple[str, ...] = tuple(SUBSETS)


def task_label(subset: Subset, task: str) -> str:
    """The table column of ``task`` in ``subset``: ``"HPA T3"``."""
    return f"{subset.title} T{TASKS.index(task) + 1}"


TABLE_COLUMNS: tuple[str, ...] = tuple(task_label(s, t) for s in SUBSETS.values() for t in s.tasks)
"""The nine columns of the benchmark table: WTC T1-T2, HPA T1-T3, CP T1-T4."""


def subset_of(key: str) -> Subset:
    """The subset called ``key``.

    :raises ValueError: listing the known keys.
    """
    try:
        return SUBSETS[key]
    except KeyError:
        raise ValueError(f"unknown CHAMMI subset {key!r}; choose one of {', '.join(SUBSET_KEYS)}") from None

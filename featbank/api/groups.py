"""``group_by="duplicates"``: a split that keeps each group of near-duplicates in one part.

A split grouped by a collection column (an object number, an artist) keeps
the images sharing a value on one side of it. Most catalogues have no column
that names the copies of one picture, so ``duplicates`` (or
``duplicates:BACKBONE`` when several backbones have features) makes one: the
groups of ``analyze.py duplicates`` with its defaults
(rotated and mirrored copies found, every pair confirmed by local features),
each image outside a group a group of its own. The groups are found afresh
on every run, so they follow the features; the saved split follows the
groups as it follows any column (an image whose group changed moves with it).
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from featbank.api.common import PathLike, quiet
from featbank.core.errors import BadInput
from featbank.data.collection import Collection
from featbank.store.features import feature_files

DUPLICATES = "duplicates"


def is_duplicates(group_by: str | None) -> bool:
    return bool(group_by) and (group_by == DUPLICATES or group_by.startswith(DUPLICATES + ":"))


def with_duplicate_groups(collection: Collection, group_by: str | None, *,
                          cache: PathLike = "cache", warn=quiet) -> Collection:
    """``collection`` with a column ``group_by`` naming each image's near-duplicate group,
    when ``group_by`` asks for one and the collection has no column of that name."""
    if not is_duplicates(group_by) or group_by in collection.labels:
        return collection
    from featbank.analysis.config import DuplicatesConfig
    from featbank.analysis.duplicates import duplicates

    backbone = group_by.partition(":")[2] or _only_backbone(Path(cache) / collection.name)
    report = duplicates(collection, DuplicatesConfig(backbone=backbone, sheet=0,
                                                     cache_root=str(cache), progress=False),
                        warn=warn)
    with open(report["csv"], newline="", encoding="utf-8") as fh:
        group = {row["id"]: f"near-duplicates {row['group']}" for row in csv.DictReader(fh)}
    warn(f"--group-by {group_by}: {report['n_groups']} groups of near-duplicates "
         f"({report['n_images_in_groups']} images, {backbone}) each kept in one part")
    column = [group.get(image_id) for image_id in collection.ids]
    return dataclasses.replace(collection, labels={**collection.labels, group_by: column})


def _only_backbone(folder: Path) -> str:
    backbones = sorted({entry.backbone for entry in feature_files(folder, warn=quiet)})
    if len(backbones) != 1:
        raise BadInput(f"--group-by duplicates: the cache has features of "
                       f"{', '.join(backbones) or 'no backbone'}; name one, e.g. "
                       f"--group-by duplicates:{backbones[0] if backbones else 'squeezenet1_1'}")
    return backbones[0]

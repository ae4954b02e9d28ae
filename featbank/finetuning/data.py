"""The images fine-tuning reads: a task's saved split as labelled uint8 views, seeded loaders."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from featbank.core.errors import BadInput
from featbank.data.collection import Collection
from featbank.data.images import decode_views
from featbank.data.tasks import Split, subsample
from featbank.finetuning.config import FinetuneConfig
from featbank.models.inference import resolve_workers


class LabelledImages(Dataset):
    """Item k -> (uint8 view (3, S, S), target, decoded?) of image ``ids[k]``.

    A target is a class index, or for a multi-label task a float 0/1 vector over
    the classes (the targets of binary cross-entropy).
    """

    def __init__(self, collection: Collection, ids: list[str], targets, pre, augment: bool):
        self.ids, self.targets, self.augment = ids, targets, augment
        self.paths = [collection.path(i) for i in ids]
        # Augmentation: resize 8/7 larger, then a random S x S crop and a random flip.
        self.pre = dataclasses.replace(pre, input_size=round(pre.input_size * 8 / 7)) if augment else pre
        self.size = pre.input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int):
        [view], reason = decode_views(self.paths[k], [self.pre])
        if self.augment:
            top, left = torch.randint(0, view.shape[1] - self.size + 1, (2,)).tolist()
            view = view[:, top:top + self.size, left:left + self.size]
            if torch.rand(()) < 0.5:
                view = view.flip(-1)
        return view, self.targets[k], not reason


def epoch_seed(config: FinetuneConfig, epoch: int) -> int:
    return config.seed * 100_003 + epoch


def make_loader(dataset, config: FinetuneConfig, *, shuffle: bool, epoch: int, device) -> DataLoader:
    # Seeded per epoch: order and augmentation do not depend on where a run resumed.
    generator = torch.Generator().manual_seed(epoch_seed(config, epoch))
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=shuffle,
                      num_workers=resolve_workers(config.workers, device), generator=generator,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def datasets(collection: Collection, split: Split, classes: list[str], pre,
              config: FinetuneConfig, *, untested: frozenset = frozenset()
              ) -> dict[str, LabelledImages]:
    """The train, val and test images of the split; ``untested``: ids left out of the test
    part (the images an init trunk was fine-tuned on)."""
    index = {c: k for k, c in enumerate(classes)}
    data = {}
    for part in ("train", "val", "test"):
        ids, labels = split.select(part)
        if part == "test" and untested:
            kept = [k for k, i in enumerate(ids) if i not in untested]
            if not kept:
                raise BadInput("every test image was among those the init trunk was "
                               "fine-tuned on; use another --seed, or a trunk fine-tuned "
                               "on another collection")
            ids, labels = [ids[k] for k in kept], [labels[k] for k in kept]
        if part == "train" and config.train_fraction < 1:
            keep = subsample(np.array(labels), config.train_fraction, config.seed)
            ids, labels = [ids[k] for k in keep], [labels[k] for k in keep]
        targets = (torch.from_numpy(split.indicator(labels).astype(np.float32))
                   if split.multi_label else [index[y] for y in labels])
        data[part] = LabelledImages(collection, ids, targets, pre,
                                    augment=config.augment and part == "train")
    return data

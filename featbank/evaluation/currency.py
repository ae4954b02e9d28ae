"""Whether stored results are current: each row's inputs against what the cache holds now.

A row records what it was computed from (``inputs``): the content of each feature
file it read (``content_sha256``), the digest of its task's split, and for a
fine-tuning run the content of its images (``images.csv`` in its run folder). A row
is current while all of them hold; tables show current rows only and say how many
they leave out, and why (:func:`current_rows`), so that a changed image, label or
feature file never leaves a number standing that no longer describes the cache.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from featbank.core.fileio import safe_name
from featbank.core.hashing import changed_images, read_stamps
from featbank.core.text import count
from featbank.store.layout import content_identity
from featbank.store.results import stored_path


class Currency:
    """What a collection's cache holds now, looked up once per file, split and run."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._content: dict[str, str | None] = {}
        self._splits: dict[tuple[str, str], str | None] = {}
        self._runs: dict[str, bool] = {}

    def content(self, name: str) -> str | None:
        """The content id of ``features/<file>`` now (None when it is gone)."""
        if name not in self._content:
            path = self.folder / name
            try:
                self._content[name] = content_identity(path) if path.is_file() else None
            except (OSError, KeyError):
                self._content[name] = None
        return self._content[name]

    def split(self, task: str, tag: str) -> str | None:
        """The digest of the saved split ``tag`` of ``task`` (None when there is none)."""
        key = (task, tag)
        if key not in self._splits:
            report = self.folder / "splits" / f"{safe_name(task)}__{tag}.json"
            try:
                self._splits[key] = json.loads(report.read_text()).get("sha256")
            except (OSError, ValueError):
                self._splits[key] = None
        return self._splits[key]

    def images_unchanged(self, run: str) -> bool:
        """Whether a fine-tuning run's images still hold the bytes it trained on (true when
        the run folder or the images cannot be looked at: nothing says they changed)."""
        if run not in self._runs:
            folder = stored_path(self.folder, run)
            try:
                recorded = read_stamps(folder / "images.csv")
                root = Path(json.loads((folder / "config.json").read_text())["images_root"])
            except (OSError, ValueError, KeyError):
                self._runs[run] = True
                return True
            paths = {i: root / i for i in recorded}
            self._runs[run] = not root.is_dir() or not changed_images(recorded, paths)
        return self._runs[run]

    def reason(self, row: dict) -> str | None:
        """Why ``row`` no longer describes the cache, or None when it does."""
        inputs = row.get("inputs")
        if inputs is None:
            return "stored before featbank recorded what a result was computed from"
        for name, content in (inputs.get("features") or {}).items():
            if self.content(name) != content:
                return "their features changed since"
        if inputs.get("split") != self.split(row["task"], row.get("split_tag", "")):
            return "their task's split changed since"
        if row.get("run") and inputs.get("images") and not self.images_unchanged(row["run"]):
            return "the images they were fine-tuned on changed since"
        return None


def current_rows(rows: list[dict], folder: Path, warn=None) -> list[dict]:
    """The rows that still describe the cache; ``warn`` hears how many others were left
    out and why, with what recomputes them."""
    currency = Currency(folder)
    kept, left = [], Counter()
    for row in rows:
        reason = currency.reason(row)
        if reason is None:
            kept.append(row)
        else:
            left[reason] += 1
    if warn is not None:
        for reason, n in left.items():
            warn(f"{count(n, 'stored result')} left out of the table: {reason} (classify.py "
                 "or finetune.py computes them again)")
    return kept

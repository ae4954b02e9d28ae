"""Ensembles (Gonthier et al.): one head's probabilities averaged across feature files.

Members are cells already in the results store (their fitted heads on disk),
so an ensemble costs only predictions. A row per task x head, with method
``ensemble`` and its own table column (``<head> ensemble``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import joblib
import numpy as np
from scipy.special import expit

from featbank.classification.cells import cell_inputs, cell_key, stale_reason
from featbank.classification.config import ClassifyConfig
from featbank.core.errors import MissingFile
from featbank.core.fileio import safe_name
from featbank.core.settings import digest
from featbank.data.tasks import Split
from featbank.evaluation.metrics import hits, metrics, score_of
from featbank.evaluation.reports import result_row, save_test_scores
from featbank.heads.registry import class_scores
from featbank.store.features import Concatenation, Features
from featbank.store.results import append_result, latest_rows, load_results, stored_path


def ensemble_key(collection: str, task: str, entries: list[Concatenation], head: str,
                 config: ClassifyConfig) -> str:
    return json.dumps(["ensemble", *(json.loads(cell_key(collection, task, e, head, config))
                                     for e in entries)], sort_keys=True)


def ensemble_inputs(entries: list[Concatenation], split: Split) -> dict:
    """What an ensemble is computed from: every member's feature files, and the split."""
    return {"features": {k: v for e in entries for k, v in e.content.items()},
            "split": split.digest}


def ensembles(folder: Path, collection: str, splits: dict[str, Split],
               entries: list[Concatenation], heads: list[str], config: ClassifyConfig,
               warn) -> list[dict]:
    """An ensemble row per task x head, from the member cells already in the store."""
    stored = {r.get("cell"): r for r in latest_rows(load_results(folder))}
    sets: list = []  # the members' features, read once for every task and head
    new = []
    for task, head in ((t, h) for t in splits for h in heads):
        key = ensemble_key(collection, task, entries, head, config)
        inputs = ensemble_inputs(entries, splits[task])
        reason = stale_reason(stored.get(key), inputs)
        if reason is None and not config.force:
            continue
        members = [stored.get(cell_key(collection, task, e, head, config)) for e in entries]
        if None in members or not all(stored_path(folder, m["head_path"]).is_file()
                                      for m in members) or any(
                stale_reason(m, cell_inputs(e, splits[task])) for m, e in zip(members, entries)):
            raise MissingFile(f"a member of the {task} / {head} ensemble has no stored "
                                    "head of these features and split; run classify.py again")
        sets = sets or [e.read() for e in entries]
        row = run_ensemble(collection=collection, task=task, split=splits[task],
                           entries=entries, sets=sets, members=members, head=head,
                           config=config, key=key, folder=folder)
        if append_result(folder, row, replace=config.force or key in stored):
            new.append(row)
            metric, value, _ = score_of(row)
            warn(f"{task} / {row['backbone']} / {head} ensemble: test {metric} {value:.3f} "
                 f"(members: {', '.join(format(score_of(m)[1], '.3f') for m in members)})")
    return new


def run_ensemble(*, collection: str, task: str, split: Split, entries: list[Concatenation],
                 sets: list[Features], members: list[dict], head: str,
                 config: ClassifyConfig, key: str, folder: Path) -> dict:
    """Average the fitted member heads' class probabilities on the ids every member has.

    sets : each entry's features (``entry.read()``), read once by the caller for
    every task and head. Heads without probabilities (svm) contribute the
    softmax of their decision scores, or for a multi-label task (one binary
    head per label) their sigmoid. Returns the ensemble's results row.
    """
    start = time.perf_counter()
    models = []
    for data, member in zip(sets, members):
        models.append((joblib.load(stored_path(folder, member["head_path"])), data.X,
                       {image_id: k for k, image_id in enumerate(data.ids)}))
    if split.multi_label:  # every member's columns follow split.classes
        classes = np.array(split.classes, dtype=object)
    else:
        classes = np.array(sorted(set().union(*(m[0].classes_ for m in models))), dtype=object)

    untested = frozenset().union(*(e.fit_ids for e in entries))
    _, y_va, p_va = _averaged(split, "val", models, classes, untested)
    test_ids, y_te, p_te = _averaged(split, "test", models, classes, untested)
    seconds = sum(m["seconds"] for m in members) + time.perf_counter() - start
    scores = "probabilities" if all(hasattr(m[0], "predict_proba") for m in models) else \
        (f"{'sigmoid' if split.multi_label else 'softmax'} of decision scores where a head "
         "has no probabilities")
    test = metrics(y_te, p_te, classes, ci=True, seed=split.spec.seed)
    paired = {}
    if split.multi_label:
        paired["test_scores"] = save_test_scores(
            folder, f"reports/{safe_name(task)}/ensemble__{head}__{digest(key, 8)}_test_scores.npz",
            test_ids, y_te, p_te, classes, test, split.spec.seed,
            identity={"cell": key, "inputs": ensemble_inputs(entries, split)})
    return result_row(
        collection=collection, backbone="+".join(e.backbone for e in entries),
        weights="+".join(e.weights for e in entries),
        weights_exact="+".join(e.weights_exact for e in entries),
        weights_label=" + ".join(e.weights_label for e in entries), task=task, method="ensemble",
        head=head, test=test, val=metrics(y_va, p_va, classes),
        n_train=max(m["n_train"] for m in members), n_val=len(y_va), n_test=len(y_te),
        n_classes=len(classes), feature_dim=sum(e.feature_dim for e in entries),
        n_params=sum(m["n_params"] for m in members), seconds=seconds,
        split_tag=split.spec.tag, test_ids=test_ids, test_hits=hits(y_te, p_te, classes),
        cell=key, inputs=ensemble_inputs(entries, split), variant=config.variant, **paired,
        members=[{"backbone": m["backbone"], "weights": m["weights"],
                  score_of(m)[0]: score_of(m)[1]} for m in members],
        member_top1=[m["top1"] for m in members], ensemble_scores=scores,
        features=" | ".join(e.paths for e in entries),
        **({"layer": " | ".join(e.layer for e in entries)}
           if any(e.layer_tag for e in entries) else {}))


def _averaged(split: Split, part: str, models: list, classes: np.ndarray, untested: frozenset):
    """The members' averaged probabilities on the ``part`` ids every member has (the test
    part without the images a fine-tuned member's trunk trained on): (ids, truth, scores)."""
    ids, labels = split.select(part)
    if part == "test" and untested:
        kept = [k for k, i in enumerate(ids) if i not in untested]
        ids, labels = [ids[k] for k in kept], [labels[k] for k in kept]
    keep = [k for k, i in enumerate(ids) if all(i in index for _, _, index in models)]
    total = np.zeros((len(keep), len(classes)))
    for pipeline, features, index in models:
        rows = [index[ids[k]] for k in keep]
        columns = slice(None) if split.multi_label else \
            np.searchsorted(classes, pipeline.classes_)
        total[:, columns] += _probabilities(pipeline, features[rows], split.multi_label)
    labels = [labels[k] for k in keep]
    truth = split.indicator(labels) if split.multi_label else np.array(labels)
    return [ids[k] for k in keep], truth, total / len(models)


def _probabilities(pipeline, X, multi_label: bool = False) -> np.ndarray:
    """Class probabilities, or where the head has none the softmax of its decision scores
    (for a multi-label head, each label's sigmoid: the labels are separate problems)."""
    if hasattr(pipeline, "predict_proba"):
        return pipeline.predict_proba(X)
    scores = class_scores(pipeline, X)
    if multi_label:
        return expit(scores)
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)

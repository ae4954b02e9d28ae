"""One epoch of training, and one pass of evaluation, over a loader of labelled views."""
from __future__ import annotations

import numpy as np
import torch

from featbank.data.images import normalize
from featbank.evaluation.metrics import hits
from featbank.evaluation.stats import mean_average_precision
from featbank.models.inference import MEMORY_FORMATS, training_autocast


def _inputs(views, pre, device, layout: str):
    """uint8 views -> the normalised float input, in ``layout`` (models.inference)."""
    x = normalize(views.to(device, non_blocking=True), pre)
    return x.contiguous(memory_format=MEMORY_FORMATS[layout])


def train_one_epoch(model, loader, optimizer, loss_fn, pre, device, scaler, bar=None, *,
                    precision: str = "fp32", layout: str = "contiguous") -> dict:
    """Train ``model`` on every decodable image of ``loader`` once, computing in
    ``precision`` (autocast; the loss in fp32) and ``layout``; mean loss and accuracy."""
    model.train()
    total, correct, seen = 0.0, 0, 0
    for views, targets, ok in loader:
        if not ok.all():
            views, targets = views[ok], targets[ok]
        targets = targets.to(device, non_blocking=True)
        with training_autocast(device, precision):
            logits = model(_inputs(views, pre, device, layout))
            loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(targets)
        classes = np.arange(logits.shape[1])  # targets are class indices (or 0/1 rows)
        correct += int(hits(targets.cpu().numpy(), logits.detach().float().cpu().numpy(),
                            classes).sum())
        seen += len(targets)
        if bar is not None:
            bar.update(len(ok))
    return {"train_loss": total / max(seen, 1), "train_acc": correct / max(seen, 1)}


@torch.inference_mode()
def evaluate_model(model, loader, loss_fn, pre, device, *, precision: str = "fp32",
                   layout: str = "contiguous") -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Mean loss and accuracy (multi-label: also mAP); scores (n, C) and targets (n,), or
    (n, C) 0/1 for a multi-label task, of the decodable images, in the loader's order;
    and which of the loader's images those are (boolean mask)."""
    model.eval()
    scores, targets_all, masks, total = [], [], [], 0.0
    for views, targets, ok in loader:
        masks.append(np.asarray(ok))
        views, targets = views[ok], targets[ok]
        targets = targets.to(device)
        with training_autocast(device, precision):
            logits = model(_inputs(views, pre, device, layout)).float()
        total += loss_fn(logits, targets).item() * len(targets)
        scores.append(logits.cpu().numpy())
        targets_all.append(targets.cpu().numpy())
    scores, targets = np.concatenate(scores), np.concatenate(targets_all)
    stats = {"loss": total / max(len(targets), 1),
             "acc": float(hits(targets, scores, np.arange(scores.shape[1])).mean())}
    if targets.ndim == 2:
        stats["mAP"] = mean_average_precision(targets, scores)[0]
    return stats, scores, targets, np.concatenate(masks)

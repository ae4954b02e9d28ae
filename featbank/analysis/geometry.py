"""Local features and geometric verification: is a candidate pair one picture twice?

Global features put a copy near its original, but also two paintings of one
series, two objects in matching mounts, two photographs of one facade.
Geometric verification tells them apart, as image retrieval has done since
Philbin et al. (2007): ORB keypoints (OpenCV) of both images, matched by
Hamming distance with Lowe's ratio test, then a similarity transform
(rotation, uniform scale, translation: what re-scans, resizes, crops and
rotations apply) fitted with RANSAC. A copy keeps hundreds of matches that
agree on one transform; distinct pictures keep a handful. The second image
is also tried mirrored. Images are brought to a working size first (the
shorter side up to :data:`WORK_SIDE` for small images, the longer side down to
:data:`MAX_SIDE`), so thumbnails and full scans are treated alike.

Needs OpenCV (``pip install 'featbank[quality]'``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from featbank.core.errors import BadInput

# RANSAC inliers from which a pair counts as one picture twice: chosen on
# bench/bench_duplicates.py (copies of real photographs against their nearest
# distinct neighbours; docs/analysis.md has its figures).
MIN_INLIERS = 20
WORK_SIDE = 256  # small images are scaled up so that their shorter side has this
MAX_SIDE = 640  # large ones down so that their longer side has this
RATIO = 0.8  # Lowe's ratio test
REPROJECTION = 4.0  # RANSAC's inlier distance, pixels at the working size


@dataclass(frozen=True)
class Match:
    """How two images agree: RANSAC ``inliers`` of the best transform, whether the
    second was ``mirrored`` for it, and the transform's ``rotation`` (degrees
    counter-clockwise, turning the first into the second) and ``scale``."""

    inliers: int
    mirrored: bool = False
    rotation: float | None = None
    scale: float | None = None

    def confirmed(self, min_inliers: int = MIN_INLIERS) -> bool:
        return self.inliers >= min_inliers


def cv2_module():
    """OpenCV, or one line naming the extra that installs it."""
    try:
        import cv2
    except ImportError:
        raise BadInput("geometric verification needs OpenCV: pip install "
                       "'featbank[quality]' (or opencv-python-headless), or pass --no-verify"
                       ) from None
    return cv2


def available() -> bool:
    try:
        cv2_module()
    except BadInput:
        return False
    return True


def working_gray(path: str | Path) -> np.ndarray | None:
    """The image as 8-bit grey at the working size, EXIF orientation applied; None
    when it cannot be read."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("L")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    scale = WORK_SIDE / min(im.size)
    if scale < 1:
        scale = min(1.0, MAX_SIDE / max(im.size))
    if scale != 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.BICUBIC)
    return np.asarray(im)


class Verifier:
    """Keypoints of each image computed once, then any pair of them matched."""

    def __init__(self, *, features: int = 1000):
        cv2 = cv2_module()
        self.cv2 = cv2
        # small patches: thumbnails of 64 px, scaled up, keep keypoints near their borders
        self.orb = cv2.ORB_create(features, edgeThreshold=15, patchSize=15)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    @functools.lru_cache(maxsize=4096)
    def keypoints(self, path: str, mirrored: bool = False):
        """(points (n, 2), descriptors) of the image at ``path``; empty when unreadable."""
        gray = working_gray(path)
        if gray is None:
            return np.zeros((0, 2), np.float32), None
        if mirrored:
            gray = np.ascontiguousarray(gray[:, ::-1])
        points, descriptors = self.orb.detectAndCompute(gray, None)
        return np.float32([p.pt for p in points]).reshape(-1, 2), descriptors

    def match(self, a: str | Path, b: str | Path) -> Match:
        """The better of ``b`` as it is and ``b`` mirrored."""
        found = [self._match(str(a), str(b), mirrored) for mirrored in (False, True)]
        return max(found, key=lambda m: m.inliers)

    def _match(self, a: str, b: str, mirrored: bool) -> Match:
        pa, da = self.keypoints(a)
        pb, db = self.keypoints(b, mirrored)
        if da is None or db is None or len(pa) < 2 or len(pb) < 2:
            return Match(0, mirrored)
        pairs = self.matcher.knnMatch(da, db, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
        if len(good) < 3:
            return Match(0, mirrored)
        p = pa[[g.queryIdx for g in good]]
        q = pb[[g.trainIdx for g in good]]
        transform, mask = self.cv2.estimateAffinePartial2D(
            p, q, method=self.cv2.RANSAC, ransacReprojThreshold=REPROJECTION)
        if transform is None or mask is None:
            return Match(0, mirrored)
        # image y points down: a counter-clockwise turn on screen is a negative angle
        rotation = -math.degrees(math.atan2(transform[1, 0], transform[0, 0])) % 360
        scale = float(math.hypot(transform[0, 0], transform[1, 0]))
        return Match(int(mask.sum()), mirrored, round(rotation, 1), round(scale, 3))

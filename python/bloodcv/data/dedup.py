"""Near-duplicate images across datasets: TXL-PBC holds BCCD images renamed, resized, cropped, rotated,
mirrored and colour-shifted, and none of BCCD's test images may train a model."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# TXL-PBC holds BCCD images renamed, and also resized (416x416, aspect changed), cropped, rotated,
# mirrored and colour-shifted (Roboflow-style augmented copies). Two tests, either one marks a duplicate:
# - thumbnails: normalised 32x32 grayscale thumbnails, 1 - correlation < thumb_threshold (exact,
#   re-encoded, resized or squeezed copies);
# - local features: SIFT on the CLAHE-equalised green channel, Lowe ratio test and a RANSAC affine fit
#   against the reference image (and its mirror image); at least min_inliers consistent matches means the
#   same field of view (crops, rotations, colour changes). On TXL-PBC vs BCCD test, images of other
#   sources (PBC, Raabin) score at most 11 inliers, the copies 17 to 600+: the default threshold is 15.
def thumbnail(path, size: int = 32) -> np.ndarray:
    """Grayscale size x size thumbnail (area resampling), normalised to zero mean and unit norm."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise OSError(f"cannot read image {path}")
    t = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)


def thumbnail_distances(candidates: Sequence, references: Sequence, size: int = 32) -> np.ndarray:
    """For each candidate image path, the smallest thumbnail distance (1 - correlation, 0 = same
    content) to any reference image; +inf when there are no references."""
    if not len(references):
        return np.full(len(candidates), np.inf)
    ref = np.stack([thumbnail(p, size) for p in references])
    out = np.empty(len(candidates))
    for i, p in enumerate(candidates):
        out[i] = float((1.0 - ref @ thumbnail(p, size)).min())
    return out


def _feature_image(path, max_side: int = 640) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image {path}")
    g = img[:, :, 1]  # green: the best contrast for Giemsa-type stains
    r = min(1.0, max_side / max(g.shape))
    if r < 1:
        g = cv2.resize(g, (round(g.shape[1] * r), round(g.shape[0] * r)), interpolation=cv2.INTER_AREA)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(g)


FEATURE_MATCHER_VERSION = 1


class FeatureMatcher:
    """Counts RANSAC-consistent SIFT matches between an image and each of a set of reference images.

    References are indexed with their mirror images; a candidate is compared in full with the
    shortlist of references that collect most of its approximate nearest-neighbour votes."""

    def __init__(self, references: Sequence, ref_features: int = 1500, features: int = 800,
                 shortlist: int = 5, ratio: float = 0.8, ransac_px: float = 5.0):
        self.sift_ref = cv2.SIFT_create(nfeatures=ref_features)
        self.sift = cv2.SIFT_create(nfeatures=features)
        self.shortlist, self.ratio, self.ransac_px = shortlist, ratio, ransac_px
        self.refs = []  # (reference index, points, descriptors)
        for i, p in enumerate(references):
            g = _feature_image(p)
            for img in (g, np.ascontiguousarray(g[:, ::-1])):
                kp, des = self.sift_ref.detectAndCompute(img, None)
                if des is not None and len(des) >= 8:
                    self.refs.append((i, np.float32([k.pt for k in kp]), des))
        self.bf = cv2.BFMatcher(cv2.NORM_L2)
        self.flann = None
        if self.refs:
            self.owner = np.concatenate([np.full(len(d), j) for j, (_, _, d) in enumerate(self.refs)])
            self.flann = cv2.FlannBasedMatcher(dict(algorithm=1, trees=4), dict(checks=64))
            self.flann.add([np.concatenate([d for _, _, d in self.refs])])
            self.flann.train()

    def best_match(self, path):
        """(inliers, reference index) of the best-matching reference; (0, -1) when none."""
        if self.flann is None:
            return 0, -1
        kp, des = self.sift.detectAndCompute(_feature_image(path), None)
        if des is None or len(des) < 8:
            return 0, -1
        pts = np.float32([k.pt for k in kp])
        votes = np.bincount(self.owner[[m.trainIdx for m in self.flann.match(des)]], minlength=len(self.refs))
        best = (0, -1)
        for j in sorted(np.argsort(-votes, kind="stable")[:self.shortlist].tolist()):
            ref_index, rpts, rdes = self.refs[j]
            pairs = self.bf.knnMatch(des, rdes, k=2)
            good = [a for a, b in (p for p in pairs if len(p) == 2) if a.distance < self.ratio * b.distance]
            if len(good) < 4:
                continue
            _, inl = cv2.estimateAffine2D(pts[[m.queryIdx for m in good]], rpts[[m.trainIdx for m in good]],
                                          method=cv2.RANSAC, ransacReprojThreshold=self.ransac_px,
                                          maxIters=2000, confidence=0.995)
            n = int(inl.sum()) if inl is not None else 0
            if n > best[0]:
                best = (n, ref_index)
        return best


def duplicate_scores(candidates: Sequence, references: Sequence, thumb_size: int = 32):
    """Per candidate: (smallest thumbnail distance, most feature inliers, index of that reference)."""
    thumb = thumbnail_distances(candidates, references, thumb_size)
    cv2.setRNGSeed(0)  # RANSAC sampling
    matcher = FeatureMatcher(references)
    feats = [matcher.best_match(p) for p in candidates]
    return thumb, np.array([f[0] for f in feats], np.int64), np.array([f[1] for f in feats], np.int64)


def find_duplicates(candidates: Sequence, references: Sequence, thumb_threshold: float = 0.05,
                    min_inliers: int = 15, thumb_size: int = 32) -> np.ndarray:
    """Boolean mask over candidates: True where the image is a near-duplicate of some reference
    (same or resized content by thumbnails, or the same field of view by local features)."""
    thumb, inliers, _ = duplicate_scores(candidates, references, thumb_size)
    return (thumb < thumb_threshold) | (inliers >= min_inliers)



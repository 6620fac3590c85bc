"""Evaluation metrics, computed the way FaRL computes them. Torch-free (numpy only).

Face parsing (FaRL ``F1Score``)
    One confusion histogram ``hist[gt, pred]`` over all pixels of all test images. Per class
    ``F1 = 2 TP / (#pred + #gt)``, ``IoU = TP / (#pred + #gt - TP)``. The reported mean F1 is the
    mean over every class except background. A class absent from both prediction and ground
    truth has an undefined (NaN) score; unlike FaRL (whose mean would become NaN) the means here
    **skip NaN classes** (documented, and it never happens on real test sets where every class
    occurs). ``miou`` uses the same rule: background excluded by default, NaN classes skipped.

Face alignment (FaRL ``NME`` / ``AUC_FR``)
    Per face ``NME = mean_k ||pred_k - gt_k|| / d`` with ``d`` the normaliser; the data-set NME is
    the mean over faces. CED(x) = fraction of faces with NME <= x, sampled at
    ``0, step, ..., threshold``; ``AUC = simpson(CED) / threshold`` (the grid includes the
    threshold itself) and ``FR = 1 - CED(threshold)`` (fraction of faces with NME > threshold).

Everything returned by ``summary()`` methods is in **percent** (93.88, not 0.9388); the
functions below return plain fractions.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "ConfusionHistogram",
    "nme",
    "normalizer",
    "ced_auc_fr",
    "simpson",
    "AlignmentMeter",
    "NORMALIZER_KINDS",
    "CONVENTIONS",
]

NORMALIZER_KINDS = ("inter_ocular", "inter_pupil", "box", "diag")
CONVENTIONS = {"300w": 68, "wflw": 98, "aflw19": 19}


def _pct(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else 100.0 * x


# ============================================================================ parsing
class ConfusionHistogram:
    """Confusion histogram ``hist[gt, pred]`` accumulated over all pixels of all images."""

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.n = 0  # images

    def reset(self) -> None:
        self.hist[:] = 0
        self.n = 0

    def update(self, pred, gt, ignore_index: int | None = 255) -> None:
        """Add one label map (H, W) or a batch (N, H, W). Pixels whose gt equals ``ignore_index``
        are skipped; any other out-of-range value (in gt or pred) raises ``ValueError``."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
        if gt.ndim not in (2, 3):
            raise ValueError(f"expected (H, W) or (N, H, W) label maps, got {gt.shape}")
        n_images = 1 if gt.ndim == 2 else gt.shape[0]
        g = gt.reshape(-1).astype(np.int64)
        p = pred.reshape(-1).astype(np.int64)
        if ignore_index is not None:
            keep = g != ignore_index
            g, p = g[keep], p[keep]
        c = self.num_classes
        if g.size and (g.min() < 0 or g.max() >= c):
            raise ValueError(f"gt labels outside 0..{c - 1} (ignore_index={ignore_index})")
        if p.size and (p.min() < 0 or p.max() >= c):
            raise ValueError(f"predicted labels outside 0..{c - 1}")
        self.hist += np.bincount(c * g + p, minlength=c * c).reshape(c, c)
        self.n += n_images

    def merge(self, other: "ConfusionHistogram") -> "ConfusionHistogram":
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge histograms with different class counts")
        self.hist += other.hist
        self.n += other.n
        return self

    # --- per class (fractions; NaN where a class is absent from both pred and gt)
    def _parts(self):
        h = self.hist.astype(np.float64)
        tp = np.diag(h)
        n_pred = h.sum(0)
        n_gt = h.sum(1)
        return tp, n_pred, n_gt

    def f1(self) -> np.ndarray:
        tp, n_pred, n_gt = self._parts()
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2 * tp / (n_pred + n_gt)

    def iou(self) -> np.ndarray:
        tp, n_pred, n_gt = self._parts()
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / (n_pred + n_gt - tp)

    def _mean(self, values: np.ndarray, exclude: Iterable[int]) -> float:
        keep = np.ones(self.num_classes, dtype=bool)
        for i in exclude:
            keep[i] = False
        v = values[keep]
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else float("nan")

    def f1_mean(self, exclude: Sequence[int] = (0,)) -> float:
        """Mean F1 over classes not in ``exclude`` (background by default); NaN classes skipped."""
        return self._mean(self.f1(), exclude)

    def miou(self, exclude: Sequence[int] = (0,)) -> float:
        """Mean IoU, same rule as :meth:`f1_mean` (background excluded, NaN classes skipped)."""
        return self._mean(self.iou(), exclude)

    def pixel_accuracy(self) -> float:
        total = self.hist.sum()
        return float(np.trace(self.hist) / total) if total else float("nan")

    def summary(self, labels: Sequence[str] | None = None, exclude: Sequence[int] = (0,)) -> dict:
        """Percentages: ``{"f1_mean", "f1": {name: ...}, "miou", "iou": {name: ...},
        "pixel_acc", "n"}``; undefined values (class absent everywhere) are ``None``."""
        if labels is None:
            labels = [f"class_{i}" for i in range(self.num_classes)]
        if len(labels) != self.num_classes:
            raise ValueError(f"{len(labels)} label names for {self.num_classes} classes")
        f1, iou = self.f1(), self.iou()
        return {
            "f1_mean": _pct(self.f1_mean(exclude)),
            "f1": {name: _pct(v) for name, v in zip(labels, f1)},
            "miou": _pct(self.miou(exclude)),
            "iou": {name: _pct(v) for name, v in zip(labels, iou)},
            "pixel_acc": _pct(self.pixel_accuracy()),
            "n": int(self.n),
        }


# ============================================================================ landmarks
def nme(pred, gt, normalizer) -> float | np.ndarray:
    """Normalised mean error per face: mean point distance / normaliser. (K, 2) -> float;
    (N, K, 2) with normaliser (N,) or scalar -> (N,)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (..., K, 2)")
    err = np.linalg.norm(pred - gt, axis=-1).mean(-1) / np.asarray(normalizer, dtype=np.float64)
    return float(err) if np.ndim(err) == 0 else err


def _check_k(gt: np.ndarray, convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown landmark convention {convention!r}; known: {sorted(CONVENTIONS)}")
    k = CONVENTIONS[convention]
    if gt.shape[-2] != k:
        raise ValueError(f"convention {convention!r} needs {k} landmarks, got {gt.shape[-2]}")


def normalizer(gt, kind: str, convention: str = "300w", box=None) -> float | np.ndarray:
    """NME normaliser of ground-truth landmarks ``gt`` ((K, 2) or (N, K, 2)).

    kind:
      * ``inter_ocular``: 300-W outer eye corners 36, 45; WFLW 60, 72 (0-based).
      * ``inter_pupil``: 300-W means of 36-41 and 42-47; WFLW pupils 96, 97.
      * ``box``: sqrt(w * h) of ``box`` (x0, y0, x1, y1) or, without one, of the landmarks'
        bounding box; ``diag``: sqrt(w^2 + h^2) of the same box. (FaRL's AFLW-19 uses the
        data set's face box: pass it.)
    AFLW-19 defines no inter-ocular / inter-pupil normaliser here (ValueError).
    """
    gt = np.asarray(gt, dtype=np.float64)
    if gt.ndim not in (2, 3) or gt.shape[-1] != 2:
        raise ValueError(f"gt must be (K, 2) or (N, K, 2), got {gt.shape}")
    if kind not in NORMALIZER_KINDS:
        raise ValueError(f"unknown normaliser {kind!r}; known: {NORMALIZER_KINDS}")
    if kind in ("inter_ocular", "inter_pupil"):
        _check_k(gt, convention)
        if convention == "300w":
            if kind == "inter_ocular":
                a, b = gt[..., 36, :], gt[..., 45, :]
            else:
                a, b = gt[..., 36:42, :].mean(-2), gt[..., 42:48, :].mean(-2)
        elif convention == "wflw":
            a, b = (gt[..., 60, :], gt[..., 72, :]) if kind == "inter_ocular" else (gt[..., 96, :], gt[..., 97, :])
        else:
            raise ValueError(f"{kind} is not defined for convention {convention!r}; use 'box' or 'diag'")
        d = np.linalg.norm(a - b, axis=-1)
    else:
        if box is None:
            lo = np.nanmin(gt, axis=-2)
            hi = np.nanmax(gt, axis=-2)
        else:
            b = np.asarray(box, dtype=np.float64)
            if b.shape[-1] != 4:
                raise ValueError(f"box must be (..., 4) x0, y0, x1, y1; got {b.shape}")
            lo, hi = b[..., :2], b[..., 2:]
        w = hi[..., 0] - lo[..., 0]
        h = hi[..., 1] - lo[..., 1]
        d = np.sqrt(w * h) if kind == "box" else np.sqrt(w * w + h * h)
    return float(d) if np.ndim(d) == 0 else d


def simpson(y, x) -> float:
    """Composite Simpson integral of samples ``y`` at ``x`` (scipy.integrate.simpson when
    available; otherwise the same rule: Simpson on the even number of intervals, and for an odd
    interval count the last interval is handled by Cartwright's correction as scipy >= 1.11)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    try:
        from scipy.integrate import simpson as _sp_simpson
    except ImportError:  # pragma: no cover - exercised via _simpson_np in tests
        return _simpson_np(y, x)
    return float(_sp_simpson(y, x=x))


def _simpson_np(y: np.ndarray, x: np.ndarray) -> float:
    n = len(y)
    if n < 2:
        return 0.0
    if n == 2:
        return float((x[1] - x[0]) * (y[0] + y[1]) / 2)
    h = np.diff(x)

    def simpson_even(y_, h_):  # odd number of samples, even number of intervals
        h0, h1 = h_[0::2], h_[1::2]
        hs = h0 + h1
        hp = h0 * h1
        hd = h0 / h1
        return float(np.sum(hs / 6.0 * (y_[0:-1:2] * (2.0 - 1.0 / hd)
                                          + y_[1::2] * hs * hs / hp
                                          + y_[2::2] * (2.0 - hd))))

    if n % 2 == 1:
        return simpson_even(y, h)
    # even number of samples: Simpson on the first n-1 samples + Cartwright correction for the
    # last interval (what scipy.integrate.simpson does since 1.11)
    result = simpson_even(y[:-1], h[:-1])
    h0, h1 = h[-2], h[-1]
    alpha = (2 * h1 ** 2 + 3 * h0 * h1) / (6 * (h0 + h1))
    beta = (h1 ** 2 + 3 * h0 * h1) / (6 * h0)
    eta = h1 ** 3 / (6 * h0 * (h0 + h1))
    return float(result + alpha * y[-1] + beta * y[-2] - eta * y[-3])


def ced_auc_fr(errors, threshold: float, step: float = 0.0001,
               farl_grid: bool = False) -> tuple[float, float]:
    """(AUC, FR) of per-face errors (fractions, e.g. NME 0.035) at ``threshold``, as FaRL:
    CED sampled at ``0, step, ..., threshold``; AUC = Simpson integral / threshold;
    FR = 1 - CED(threshold) = fraction of errors > threshold. Both returned as fractions.

    ``farl_grid=True`` samples with FaRL's literal ``np.arange(0, threshold + step, step)``,
    which for some thresholds (0.07 with step 1e-4) overshoots by one step, so AUC integrates
    to 0.0701 and FR is read at 0.0701; the default grid ends exactly at ``threshold``.
    (At 0.1 both grids are identical.)"""
    e = np.sort(np.asarray(errors, dtype=np.float64).reshape(-1))
    if e.size == 0:
        raise ValueError("no errors to evaluate")
    if threshold <= 0 or step <= 0:
        raise ValueError("threshold and step must be positive")
    if farl_grid:
        x = np.arange(0.0, threshold + step, step)
    else:
        x = np.linspace(0.0, threshold, int(round(threshold / step)) + 1)
    ced = np.searchsorted(e, x, side="right") / e.size  # fraction of errors <= x
    auc = simpson(ced, x) / threshold
    fr = 1.0 - float(ced[-1])
    return float(auc), fr


class AlignmentMeter:
    """Accumulates (pred, gt) landmark pairs and reports NME / AUC / FR like FaRL.

    ``convention``: "300w" (68 points), "wflw" (98) or "aflw19" (19). NME_io / NME_ip use the
    convention's eye points; AFLW-19 reports NME_box / NME_diag instead (face box passed to
    :meth:`update`, else the landmarks' bounding box). AUC/FR are computed on
    ``auc_on`` (default: inter-ocular NME; "box" for AFLW-19), at ``auc_threshold`` (default
    0.1 for 300-W/WFLW, 0.07 for AFLW-19).
    """

    def __init__(self, convention: str = "300w", auc_threshold: float | None = None,
                 auc_on: str | None = None, step: float = 0.0001):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown landmark convention {convention!r}; known: {sorted(CONVENTIONS)}")
        self.convention = convention
        self.auc_threshold = float(auc_threshold if auc_threshold is not None
                                   else (0.07 if convention == "aflw19" else 0.1))
        self.kinds = ("box", "diag") if convention == "aflw19" else ("inter_ocular", "inter_pupil")
        self.auc_on = auc_on or self.kinds[0]
        if self.auc_on not in NORMALIZER_KINDS:
            raise ValueError(f"auc_on must be one of {NORMALIZER_KINDS}")
        self.step = step
        self.errors: dict[str, list[float]] = {k: [] for k in NORMALIZER_KINDS}

    def reset(self) -> None:
        for v in self.errors.values():
            v.clear()

    def update(self, pred, gt, box=None) -> None:
        """Add one face ((K, 2)) or a batch ((N, K, 2)); ``box`` (4,) / (N, 4) for box/diag."""
        pred = np.asarray(pred, dtype=np.float64)
        gt = np.asarray(gt, dtype=np.float64)
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
        _check_k(gt, self.convention)
        if gt.ndim == 2:
            pred, gt = pred[None], gt[None]
            box = None if box is None else np.asarray(box, dtype=np.float64)[None]
        needed = set(self.kinds) | {self.auc_on}
        for kind in NORMALIZER_KINDS:
            if kind not in needed:
                continue
            d = np.atleast_1d(normalizer(gt, kind, self.convention, box=box if kind in ("box", "diag") else None))
            self.errors[kind].extend(np.atleast_1d(nme(pred, gt, d)).tolist())

    @property
    def n(self) -> int:
        return len(self.errors[self.auc_on])

    def summary(self) -> dict:
        """Percentages: nme_io / nme_ip (or nme_box / nme_diag for AFLW-19), auc, fr; plus
        ``auc_threshold`` (fraction, e.g. 0.1), ``auc_on`` and ``n`` (faces)."""
        short = {"inter_ocular": "nme_io", "inter_pupil": "nme_ip", "box": "nme_box", "diag": "nme_diag"}
        out: dict = {}
        for kind in self.kinds:
            e = self.errors[kind]
            out[short[kind]] = 100.0 * float(np.mean(e)) if e else None
        if self.n:
            auc, fr = ced_auc_fr(self.errors[self.auc_on], self.auc_threshold, self.step)
            out["auc"], out["fr"] = 100.0 * auc, 100.0 * fr
        else:
            out["auc"] = out["fr"] = None
        out["auc_threshold"] = self.auc_threshold
        out["auc_on"] = short[self.auc_on]
        out["n"] = self.n
        return out

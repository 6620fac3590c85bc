"""farl_edge.metrics: parsing F1 / IoU and landmark NME / AUC / FR as FaRL computes them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from farl_edge import metrics as mt


# ------------------------------------------------------------------------------ parsing
def test_confusion_hand_computed():
    gt = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    h = mt.ConfusionHistogram(3)
    h.update(pred, gt)
    np.testing.assert_array_equal(h.hist, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # class 0: TP 1, pred 2, gt 2 -> 0.5; class 1: TP 2, pred 3, gt 2 -> 0.8; class 2: TP 1, pred 1, gt 2 -> 2/3
    np.testing.assert_allclose(h.f1(), [0.5, 0.8, 2 / 3])
    np.testing.assert_allclose(h.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert h.f1_mean() == pytest.approx((0.8 + 2 / 3) / 2)
    assert h.f1_mean(exclude=()) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert h.miou() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert h.pixel_accuracy() == pytest.approx(4 / 6)
    s = h.summary(["bg", "a", "b"])
    assert s["f1_mean"] == pytest.approx(100 * (0.8 + 2 / 3) / 2)
    assert s["f1"] == pytest.approx({"bg": 50.0, "a": 80.0, "b": 200 / 3})
    assert s["pixel_acc"] == pytest.approx(400 / 6)
    assert s["miou"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert s["n"] == 1


def test_one_histogram_over_all_images():
    """FaRL sums pixels over the data set; it does not average per-image F1."""
    h = mt.ConfusionHistogram(2)
    h.update(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]]))  # perfect, 4 px
    h.update(np.array([[0, 0]]), np.array([[1, 1]]))  # all wrong, 2 px
    assert h.f1()[1] == pytest.approx(2 * 4 / (4 + 6))
    assert h.n == 2
    h.update(np.zeros((3, 2, 2), int), np.zeros((3, 2, 2), int))  # a batch of 3 images
    assert h.n == 5


def test_absent_classes_are_nan_and_skipped():
    h = mt.ConfusionHistogram(4)
    h.update(np.array([[0, 1], [1, 0]]), np.array([[0, 1], [1, 0]]))
    f1 = h.f1()
    assert f1[1] == 1.0 and math.isnan(f1[2]) and math.isnan(f1[3])
    assert h.f1_mean() == 1.0 and h.miou() == 1.0
    s = h.summary(["bg", "a", "b", "c"])
    assert s["f1"]["b"] is None and s["f1"]["c"] is None
    # predicted but never in gt: F1 = 0, not NaN
    h.update(np.array([[3]]), np.array([[1]]))
    assert h.f1()[3] == 0.0
    empty = mt.ConfusionHistogram(3)
    assert math.isnan(empty.f1_mean()) and empty.summary()["f1_mean"] is None


def test_ignore_index_and_range_checks():
    h = mt.ConfusionHistogram(3)
    h.update(np.array([[0, 1, 2]]), np.array([[0, 255, 2]]))
    assert h.hist.sum() == 2
    with pytest.raises(ValueError):
        h.update(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError):
        h.update(np.array([[0]]), np.array([[7]]))
    with pytest.raises(ValueError):
        h.update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_f1_iou_match_sklearn():
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(0)
    c = 11
    h = mt.ConfusionHistogram(c)
    preds, gts = [], []
    for _ in range(4):
        gt = rng.integers(0, c, (37, 53))
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, c, gt.shape))
        h.update(pred, gt)
        preds.append(pred.ravel())
        gts.append(gt.ravel())
    p, t = np.concatenate(preds), np.concatenate(gts)
    labels = list(range(c))
    np.testing.assert_allclose(h.f1(), f1_score(t, p, labels=labels, average=None), atol=1e-12)
    np.testing.assert_allclose(h.iou(), jaccard_score(t, p, labels=labels, average=None), atol=1e-12)
    np.testing.assert_allclose(h.f1_mean(), f1_score(t, p, labels=labels[1:], average="macro"), atol=1e-12)
    assert h.pixel_accuracy() == pytest.approx((p == t).mean())


# ------------------------------------------------------------------------------ landmarks
def _face68(rng):
    return rng.uniform(50, 150, (68, 2))


def test_nme_known_normaliser():
    gt = np.zeros((68, 2))
    pred = gt + [3.0, 4.0]  # every point 5 px off
    assert mt.nme(pred, gt, 50.0) == pytest.approx(0.1)
    batch = mt.nme(np.stack([pred, gt]), np.stack([gt, gt]), np.array([10.0, 10.0]))
    np.testing.assert_allclose(batch, [0.5, 0.0])
    with pytest.raises(ValueError):
        mt.nme(pred[:10], gt, 1.0)


def test_normalizers():
    rng = np.random.default_rng(1)
    gt = _face68(rng)
    assert mt.normalizer(gt, "inter_ocular", "300w") == pytest.approx(np.linalg.norm(gt[36] - gt[45]))
    ip = np.linalg.norm(gt[36:42].mean(0) - gt[42:48].mean(0))
    assert mt.normalizer(gt, "inter_pupil", "300w") == pytest.approx(ip)
    g98 = rng.uniform(0, 100, (98, 2))
    assert mt.normalizer(g98, "inter_ocular", "wflw") == pytest.approx(np.linalg.norm(g98[60] - g98[72]))
    assert mt.normalizer(g98, "inter_pupil", "wflw") == pytest.approx(np.linalg.norm(g98[96] - g98[97]))
    g19 = rng.uniform(0, 100, (19, 2))
    w, h = np.ptp(g19[:, 0]), np.ptp(g19[:, 1])
    assert mt.normalizer(g19, "box", "aflw19") == pytest.approx(math.sqrt(w * h))
    assert mt.normalizer(g19, "diag", "aflw19") == pytest.approx(math.hypot(w, h))
    assert mt.normalizer(g19, "box", "aflw19", box=[10, 20, 50, 120]) == pytest.approx(math.sqrt(40 * 100))
    assert mt.normalizer(g19, "diag", "aflw19", box=[10, 20, 50, 120]) == pytest.approx(math.hypot(40, 100))
    np.testing.assert_allclose(mt.normalizer(np.stack([gt, gt * 2]), "inter_ocular", "300w"),
                               [np.linalg.norm(gt[36] - gt[45]), 2 * np.linalg.norm(gt[36] - gt[45])])
    with pytest.raises(ValueError):
        mt.normalizer(g19, "inter_ocular", "aflw19")
    with pytest.raises(ValueError):
        mt.normalizer(gt, "inter_ocular", "wflw")  # 68 points under the 98-point convention
    with pytest.raises(ValueError):
        mt.normalizer(gt, "bogus", "300w")


def test_auc_fr_uniform_errors():
    t = 0.1
    n = 200_000
    errors = (np.arange(n) + 0.5) / n * 2 * t  # uniform on [0, 2t]: CED(x) = x / 2t
    auc, fr = mt.ced_auc_fr(errors, t)
    assert auc == pytest.approx(0.25, abs=1e-4)  # (1/t) * integral_0^t x / 2t dx
    assert fr == pytest.approx(0.5, abs=1e-5)
    # uniform on [0, t/2]: CED = 2x/t up to t/2, then 1 -> AUC = 1/4 + 1/2
    auc, fr = mt.ced_auc_fr(errors / 4, t)
    assert auc == pytest.approx(0.75, abs=1e-3) and fr == 0.0


def test_auc_fr_extremes_and_fr_definition():
    auc, fr = mt.ced_auc_fr(np.zeros(10), 0.1)
    assert auc == pytest.approx(1.0) and fr == 0.0
    auc, fr = mt.ced_auc_fr(np.full(10, 0.5), 0.1)
    assert auc == 0.0 and fr == 1.0
    # FR = fraction strictly above the threshold (an error equal to it is not a failure)
    _, fr = mt.ced_auc_fr([0.01, 0.1, 0.2, 0.3], 0.1)
    assert fr == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mt.ced_auc_fr([], 0.1)


def test_auc_matches_farl_reference_loop():
    """FaRL's loop: x = arange(0, t + step, step); ced = count(e <= x) / n; simpson / t."""
    from scipy.integrate import simpson

    rng = np.random.default_rng(3)
    errors = rng.gamma(2.0, 0.02, 500)
    for t in (0.1, 0.08, 0.07):
        x = np.arange(0.0, t + 1e-4, 1e-4)
        ced = np.array([np.count_nonzero(errors <= xi) / errors.size for xi in x])
        auc, fr = mt.ced_auc_fr(errors, t, farl_grid=True)
        assert auc == pytest.approx(simpson(ced, x=x) / t, abs=1e-12)
        assert fr == pytest.approx(1 - ced[-1])
        auc_clean, _ = mt.ced_auc_fr(errors, t)
        assert abs(auc_clean - auc) < 2e-3


@pytest.mark.parametrize("n", [2, 3, 4, 11, 12, 101, 1000])
def test_numpy_simpson_matches_scipy(n):
    from scipy.integrate import simpson

    rng = np.random.default_rng(n)
    x = np.sort(rng.uniform(0, 1, n))
    y = rng.normal(size=n)
    assert mt._simpson_np(y, x) == pytest.approx(simpson(y, x=x), rel=1e-10, abs=1e-12)
    xs = np.linspace(0, 2, n)
    assert mt._simpson_np(xs ** 2, xs) == pytest.approx(simpson(xs ** 2, x=xs), rel=1e-10, abs=1e-12)


def test_alignment_meter_300w():
    rng = np.random.default_rng(4)
    meter = mt.AlignmentMeter("300w")
    gts, preds = [], []
    for _ in range(20):
        gt = _face68(rng)
        pred = gt + rng.normal(0, 1.0, gt.shape)
        meter.update(pred, gt)
        gts.append(gt)
        preds.append(pred)
    meter.update(np.stack(preds[:3]), np.stack(gts[:3]))  # batches work too
    s = meter.summary()
    assert s["n"] == 23
    e_io = [mt.nme(p, g, mt.normalizer(g, "inter_ocular")) for p, g in zip(preds + preds[:3], gts + gts[:3])]
    e_ip = [mt.nme(p, g, mt.normalizer(g, "inter_pupil")) for p, g in zip(preds + preds[:3], gts + gts[:3])]
    assert s["nme_io"] == pytest.approx(100 * np.mean(e_io))
    assert s["nme_ip"] == pytest.approx(100 * np.mean(e_ip))
    auc, fr = mt.ced_auc_fr(e_io, 0.1)
    assert s["auc"] == pytest.approx(100 * auc) and s["fr"] == pytest.approx(100 * fr)
    assert s["auc_threshold"] == 0.1


def test_alignment_meter_aflw19_uses_box():
    meter = mt.AlignmentMeter("aflw19")
    gt = np.random.default_rng(5).uniform(0, 100, (19, 2))
    meter.update(gt + [0.0, 2.0], gt, box=[0, 0, 100, 100])
    s = meter.summary()
    assert s["nme_box"] == pytest.approx(2.0) and s["nme_diag"] == pytest.approx(200 / math.hypot(100, 100))
    assert s["auc_threshold"] == 0.07 and s["auc_on"] == "nme_box"
    assert "nme_io" not in s
    with pytest.raises(ValueError):
        meter.update(np.zeros((68, 2)), np.zeros((68, 2)))


# ------------------------------------------------------------------------------ export validation
def test_export_validation_normalises_aflw19_by_the_face_box_as_evaluate_does():
    """validate._task_alignment passes the data set's face box (FaRL's AFLW-19 NME_box), like evaluate."""
    from types import SimpleNamespace

    from farl_edge.evaluate import AUC_THRESHOLDS
    from farl_edge.export.validate import ParityReport, _task_alignment

    rng = np.random.default_rng(0)
    samples, ref, art = [], [], []
    for i in range(4):
        gt = rng.uniform(40, 160, size=(19, 2))
        box = np.array([20.0, 10.0, 190.0, 200.0]) + i  # larger than the landmarks' own box
        samples.append(SimpleNamespace(landmarks=gt, box=box, name=str(i)))
        ref.append(SimpleNamespace(landmarks=gt + rng.normal(0, 2, gt.shape)))
        art.append(SimpleNamespace(landmarks=gt + rng.normal(0, 2, gt.shape)))
    report = ParityReport()
    tol = SimpleNamespace(landmark_disagreement=100.0, nme_delta=100.0)
    _task_alignment(report, SimpleNamespace(dataset="aflw19"), samples, ref, art, tol)
    for who, preds in (("reference", ref), ("artifact", art)):
        meter = mt.AlignmentMeter("aflw19", AUC_THRESHOLDS["aflw19"])
        for s, p in zip(samples, preds):
            meter.update(p.landmarks, s.landmarks, box=s.box)
        assert report.metrics[who]["nme_box"] == pytest.approx(meter.summary()["nme_box"])
        unboxed = mt.AlignmentMeter("aflw19", AUC_THRESHOLDS["aflw19"])
        for s, p in zip(samples, preds):
            unboxed.update(p.landmarks, s.landmarks)
        assert report.metrics[who]["nme_box"] != pytest.approx(unboxed.summary()["nme_box"])

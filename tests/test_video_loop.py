"""Capture loop: a 1,000-frame video with steady memory and one result per processed frame,
stale-frame dropping for live sources, bad frames in a stream, smoothing filters and tracks."""
from __future__ import annotations

import gc
import time
import tracemalloc

import numpy as np
import pytest

from helpers_runtime import OrtStubPredictor, StubPredictor, write_video

from farl_edge.runtime.detector import Detection
from farl_edge.runtime.pipeline import FacePipeline
from farl_edge.runtime.video import CaptureLoop, EmaFilter, FaceSmoother, OneEuroFilter


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_1000_frame_video_steady_memory_no_lost_results(tmp_path):
    """Detector and model both run in ONNX Runtime sessions (the model: a tiny graph through the
    runtime's onnxruntime backend), so native allocations count in the RSS check."""
    pytest.importorskip("onnx")
    video, real_face = write_video(tmp_path / "synthetic.avi", frames=1000, hw=(120, 160))
    stub = OrtStubPredictor(tmp_path)
    pipe = FacePipeline(stub)
    indices, with_face = [], 0
    traced, rss = {}, {}
    tracemalloc.start()
    try:
        with CaptureLoop(pipe, video, smoothing="one_euro") as loop:
            assert loop.frame_count == 1000 and not loop.drop_stale
            for frame, result in loop:
                assert frame.shape == (120, 160, 3) and result.frame_hw == (120, 160)
                indices.append(result.index)
                with_face += bool(result.faces)
                if result.index in (200, 999):
                    gc.collect()
                    traced[result.index] = tracemalloc.get_traced_memory()[0]
                    rss[result.index] = _rss_mb()
    finally:
        tracemalloc.stop()
    assert indices == list(range(1000))  # every frame read gave exactly one result, in order
    assert loop.stats.read == 1000 and loop.stats.processed == 1000 and loop.stats.dropped == 0
    assert stub.faces == with_face  # one inference per face found, none lost
    if real_face:
        assert with_face >= 950, with_face
        assert len({f.track_id for f in result.faces}) == 1
    growth = traced[999] - traced[200]
    assert growth < 1_000_000, f"Python heap grew {growth / 1e6:.2f} MB over 800 frames"
    assert rss[999] - rss[200] < 40, f"RSS grew {rss[999] - rss[200]:.1f} MB over 800 frames"
    assert loop.stats.fps > 0 and loop.stats.stage_ms["detect"] > 0


def test_live_source_drops_stale_frames_instead_of_lagging():
    frames = (np.full((48, 64, 3), i % 255, np.uint8) for i in range(300))

    def slow_source():
        for f in frames:
            time.sleep(0.0005)
            yield f

    stub = StubPredictor()
    pipe = FacePipeline(stub)
    seen = []
    with CaptureLoop(pipe, slow_source(), drop_stale=True, queue_size=2) as loop:
        for _, result in loop:
            time.sleep(0.01)  # a consumer slower than the camera
            seen.append(result.index)
    assert loop.stats.dropped > 0
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert loop.stats.processed == len(seen)
    assert loop.stats.processed + loop.stats.dropped == loop.stats.read == 300
    assert seen[-1] == 299  # the newest frame is always processed


def test_bad_frames_in_a_stream_never_stop_the_loop():
    good = np.zeros((48, 64, 3), np.uint8)
    stream = [good, None, np.zeros((0, 0, 3), np.uint8), good[:, :, 0], np.zeros((48, 64, 5), np.uint8),
              good.astype(np.uint16), "not a frame", np.zeros((48, 64, 4), np.uint8), good]
    loop = CaptureLoop(FacePipeline(StubPredictor()), stream, smoothing="ema")
    results = [r for _, r in loop]
    assert [r.index for r in results] == list(range(len(stream)))
    errors = [r.error for r in results]
    assert errors[1] == errors[2] == "empty frame"
    assert "channels" in errors[4] and "dtype" in errors[6]
    assert errors[0] is errors[3] is errors[5] is errors[7] is errors[8] is None
    assert loop.stats.errors == 2


def test_source_errors_are_reported():
    def broken():
        yield np.zeros((8, 8, 3), np.uint8)
        raise OSError("camera unplugged")

    loop = CaptureLoop(FacePipeline(StubPredictor()), broken())
    got = []
    with pytest.raises(RuntimeError, match="camera unplugged"):
        for _, r in loop:
            got.append(r.index)
    assert got == [0]
    with pytest.raises(FileNotFoundError):
        CaptureLoop(FacePipeline(StubPredictor()), "/nonexistent/video.mp4")


def test_app_detections_callback(tmp_path):
    stream = [np.zeros((60, 80, 3), np.uint8)] * 3
    loop = CaptureLoop(FacePipeline(StubPredictor(), detector=None), stream,
                       detections=lambda frame: {"boxes": [[10, 10, 50, 50]]})
    results = [r for _, r in loop]
    assert all(len(r.faces) == 1 and r.faces[0].source == "app" for r in results)


# ----------------------------------------------------------------------------- filters
def test_one_euro_filter_steadies_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    t = np.arange(300) / 30.0
    noisy = 1.0 + rng.normal(0, 0.02, (300, 5, 2))
    out = np.stack([f(x, ti) for x, ti in zip(noisy, t)])
    assert out[30:].std() < 0.5 * noisy[30:].std()
    f2 = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    step = [f2(np.array([0.0 if i < 30 else 10.0]), i / 30) for i in range(60)]
    assert abs(step[-1][0] - 10.0) < 0.5  # catches up after a jump
    e = EmaFilter(0.5)
    e(np.zeros(2), 0)
    np.testing.assert_allclose(e(np.ones(2), 1), 0.5)


def _det(x):
    box = np.array([x, 10.0, x + 40, 50.0])
    return Detection(box=box, score=0.9, five_points=np.tile(box[:2], (5, 1)) + 5, face_box=box)


def test_smoother_tracks_by_iou_and_forgets():
    sm = FaceSmoother("one_euro", max_missing=2)
    ids = []
    for i in range(10):
        out = sm.smooth_detections([_det(10 + i), _det(200)], t=i / 30)
        ids.append([d.extra["track_id"] for d in out])
    assert all(row == ids[0] for row in ids) and ids[0][0] != ids[0][1]
    for i in range(5):  # the faces leave: tracks expire, memory stays bounded
        sm.smooth_detections([], t=(10 + i) / 30)
    assert sm.tracks == []
    new = sm.smooth_detections([_det(10)], t=1.0)[0].extra["track_id"]
    assert new not in ids[0]
    with pytest.raises(ValueError):
        FaceSmoother("kalman")

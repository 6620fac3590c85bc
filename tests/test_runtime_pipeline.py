"""Face pipeline of the torch-free runtime: no torch import, parity with the PyTorch model on the
same crops, label maps, the app's own detections, bad frames, overlays and `farl-edge run`."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import shared_data
from helpers_runtime import StubPredictor, face_patch, helen_files, write_video

from farl_edge import crops, geometry
from farl_edge.runtime.frames import FrameError, to_rgb_u8
from farl_edge.runtime.pipeline import FacePipeline, FrameResult


def _helen(i: int):
    from farl_edge.datasets.ibug300w import read_pts

    files = helen_files()
    if not files:
        pytest.skip("needs ../shared/data/300w/test-helen")
    f = files[i]
    return cv2.imread(str(f)), read_pts(f.with_suffix(".pts")) - 0.5


@pytest.fixture(scope="module")
def stub_pipe():
    return FacePipeline(StubPredictor("farl-small-300w"))


# ----------------------------------------------------------------------------- no torch
def test_runtime_does_not_import_torch():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import farl_edge.runtime, farl_edge.runtime.pipeline, farl_edge.runtime.video, farl_edge.runtime.draw\n"
        "import farl_edge.runtime.detector, farl_edge.runtime.frames, farl_edge.runtime.cli\n"
        "from farl_edge.runtime.detector import FaceDetector\n"
        "FaceDetector().detect(np.zeros((64, 64, 3), np.uint8))\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad[:5]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# ----------------------------------------------------------------------------- parity with PyTorch
@pytest.fixture(scope="module")
def artifact_300w(tmp_path_factory):
    """farl-small-300w exported to ONNX fp32 (shipped weights when present, else seeded random)."""
    torch = pytest.importorskip("torch")
    helen = shared_data("300w", "test-helen")
    from farl_edge.export import ExportRequest, export
    from farl_edge.models import create_model
    from farl_edge.models.predictor import TorchPredictor

    torch.manual_seed(0)
    net = create_model("farl-small-300w").eval()
    out = tmp_path_factory.mktemp("art") / "farl-small-300w-onnx-fp32"
    export(ExportRequest(model=net, target="onnx", precision="fp32", output=out, eval_data=helen, eval_size=2,
                         log=lambda *a: None))
    return out, TorchPredictor(net)


def test_landmarks_match_pytorch_on_the_same_crops(artifact_300w):
    path, torch_pred = artifact_300w
    pipe = FacePipeline(path, threads=2)
    cfg = pipe.config
    for i in (0, 11):
        bgr, pts = _helen(i)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for result in (pipe(bgr, color="bgr"),  # built-in detector
                       pipe(rgb, color="rgb", boxes=[geometry.box_from_points(pts)])):  # the app's box
            assert len(result.faces) >= 1
            face = result.faces[0]
            # the crop is crops.crop_matrix on the (calibrated) face box, as in evaluation
            np.testing.assert_allclose(face.matrix, crops.crop_matrix(cfg.preprocess, cfg.input_size, box=face.crop_box))
            crop = crops.warp_input(rgb, face.matrix, cfg.input_size, cfg.preprocess)
            ref = torch_pred(crops.to_tensor_layout(crop[None]))["landmarks"][0]
            ref = crops.landmarks_to_image(ref, face.matrix, cfg.input_size, cfg.preprocess)
            assert face.landmarks.shape == (68, 2)
            np.testing.assert_allclose(face.landmarks, ref, atol=0.02)


def test_run_cli_on_image_and_video(artifact_300w, tmp_path):
    from farl_edge.cli import main

    path, _ = artifact_300w
    img = helen_files()[0]
    out = tmp_path / "out.png"
    assert main(["run", "--model", str(path), "--source", str(img), "--output", str(out), "--threads", "2"]) == 0
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == cv2.imread(str(img)).shape
    video, _ = write_video(tmp_path / "in.avi", frames=6)
    vout, jl = tmp_path / "out.avi", tmp_path / "r.jsonl"
    assert main(["run", "--model", str(path), "--source", str(video), "--output", str(vout), "--json", str(jl),
                 "--smooth", "one_euro", "--threads", "2"]) == 0
    cap = cv2.VideoCapture(str(vout))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert [d["index"] for d in lines] == list(range(6))
    assert main(["run", "--model", str(tmp_path), "--source", str(img)]) == 2  # not an artifact
    assert main(["run", "--model", str(path), "--source", str(tmp_path / "missing.jpg")]) == 2


# ----------------------------------------------------------------------------- parsing label maps
@pytest.mark.parametrize("warp", ["similarity", "tanh"])
def test_label_map_region_equals_full_frame_map(warp):
    bgr, pts = _helen(3)
    stub = StubPredictor("farl-small-celebm")
    stub.config = dataclasses.replace(stub.config, preprocess={"warp": warp, "warp_factor": 0.8})
    five = geometry.five_points_from_68(pts)
    full = FacePipeline(stub, label_roi=None)(bgr, five_points=five)
    roi = FacePipeline(stub, label_roi=2.0)(bgr, five_points=five)
    f_full, f_roi = full.faces[0], roi.faces[0]
    assert f_full.label_map.shape == bgr.shape[:2] and f_full.label_origin == (0, 0)
    # identical to evaluation's crops.logits_to_label_map on the whole frame
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    cfg = stub.config
    logits = stub(crops.to_tensor_layout(crops.warp_input(rgb, f_full.matrix, cfg.input_size, cfg.preprocess)[None]))
    ref = crops.logits_to_label_map(logits["logits"][0], f_full.matrix, cfg.input_size, cfg.preprocess, bgr.shape[:2])
    np.testing.assert_array_equal(f_full.label_map, ref)
    # the region map is the full map cut out (and, for similarity crops, nothing is lost outside it)
    x0, y0 = f_roi.label_origin
    h, w = f_roi.label_map.shape
    assert 0 < h * w <= bgr.shape[0] * bgr.shape[1]
    np.testing.assert_array_equal(f_roi.label_map, ref[y0:y0 + h, x0:x0 + w])
    pasted = f_roi.label_map_full(bgr.shape[:2])
    if warp == "similarity":
        np.testing.assert_array_equal(pasted, ref)
    np.testing.assert_array_equal(roi.merged_label_map(), pasted)
    assert roi.labels == list(cfg.labels)


def test_parsing_with_app_boxes_finds_five_points():
    bgr, pts = _helen(4)
    pipe = FacePipeline(StubPredictor("farl-small-celebm"))
    res = pipe(bgr, boxes=geometry.box_from_points(pts))
    face = res.faces[0]
    five = geometry.five_points_from_68(pts)
    iod = np.linalg.norm(five[1] - five[0])
    assert np.linalg.norm(face.five_points - five, axis=1).mean() / iod < 0.25
    np.testing.assert_allclose(face.matrix, crops.crop_matrix(pipe.preprocess, pipe.size, five_points=face.five_points))


# ----------------------------------------------------------------------------- the app's detections
def test_app_detections(stub_pipe):
    bgr, pts = _helen(2)
    box = geometry.box_from_points(pts)
    five = geometry.five_points_from_68(pts)
    assert len(stub_pipe(bgr, boxes=box).faces) == 1
    res = stub_pipe(bgr, five_points=[five, five + 5])
    assert len(res.faces) == 2 and res.timings["detect"] >= 0
    # rows that are not faces are skipped; wrong shapes are the caller's error
    bad_rows = np.array([box, [np.nan, 0, 1, 1], [10, 10, 10, 50]])
    assert len(stub_pipe(bgr, boxes=bad_rows).faces) == 1
    with pytest.raises(ValueError, match="boxes"):
        stub_pipe(bgr, boxes=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="five_points"):
        stub_pipe(bgr, five_points=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="boxes but"):
        stub_pipe(bgr, boxes=[box, box], five_points=[five])
    no_det = FacePipeline(StubPredictor(), detector=None)
    with pytest.raises(ValueError, match="no face detector"):
        no_det(bgr)
    assert len(no_det(bgr, boxes=[box]).faces) == 1


def test_all_faces_in_one_batch():
    patch = face_patch(120)
    if patch is None:
        pytest.skip("needs test-helen")
    frame = np.full((200, 400, 3), 80, np.uint8)
    frame[40:160, 30:150] = patch
    frame[40:160, 250:370] = patch[:, ::-1]
    stub = StubPredictor()
    res = FacePipeline(stub)(frame)
    assert len(res.faces) == 2 and stub.calls == 1 and stub.faces == 2
    assert FacePipeline(stub, max_faces=1)(frame).faces.__len__() == 1


# ----------------------------------------------------------------------------- bad frames
def _gray(bgr):
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


BAD_BUT_USABLE = {
    "gray": lambda f: _gray(f),
    "gray_hw1": lambda f: _gray(f)[:, :, None],
    "bgra": lambda f: cv2.cvtColor(f, cv2.COLOR_BGR2BGRA),
    "uint16": lambda f: f.astype(np.uint16) * 257,
    "float32": lambda f: f.astype(np.float32) / 255,
    "float64_nan": lambda f: np.where(np.arange(f.shape[1])[None, :, None] == 0, np.nan, f / 255.0),
    "non_contiguous": lambda f: f[:, ::-1],
}


@pytest.mark.parametrize("kind", list(BAD_BUT_USABLE))
def test_converted_frames_give_the_face(stub_pipe, kind):
    bgr, pts = _helen(1)
    res = stub_pipe(BAD_BUT_USABLE[kind](bgr))
    assert isinstance(res, FrameResult) and res.frame_hw == bgr.shape[:2]
    assert len(res.faces) >= 1, kind
    centre = pts.mean(0)
    if kind == "non_contiguous":
        centre[0] = bgr.shape[1] - centre[0]
    b = res.faces[0].box
    assert b[0] < centre[0] < b[2] and b[1] < centre[1] < b[3]


@pytest.mark.parametrize("frame", [None, np.zeros((0, 0, 3), np.uint8), np.zeros((0, 10), np.uint8), [],
                                   np.zeros((1, 1, 3), np.uint8), np.zeros((3, 5), np.uint8),
                                   np.zeros((240, 320, 3), np.uint8)],
                         ids=["none", "empty", "empty_gray", "empty_list", "1x1", "3x5", "no_face"])
def test_empty_or_faceless_frames(stub_pipe, frame):
    res = stub_pipe(frame)
    assert res.faces == [] and res.empty
    assert set(res.timings) >= {"detect", "preprocess", "infer", "postprocess", "total"}


@pytest.mark.parametrize("frame", [np.zeros((8, 8, 5), np.uint8), np.zeros((2, 8, 8, 3), np.uint8),
                                   np.zeros((8, 8, 3), bool), np.zeros((8, 8, 3), complex), "frame.jpg",
                                   np.zeros((8, 8, 2), np.uint8)],
                         ids=["5ch", "4d", "bool", "complex", "str", "2ch"])
def test_unusable_frames_raise_a_clear_error(stub_pipe, frame):
    with pytest.raises(FrameError, match="frame"):
        stub_pipe(frame)


def test_bad_color_argument(stub_pipe):
    with pytest.raises(ValueError, match="color"):
        stub_pipe(np.zeros((8, 8, 3), np.uint8), color="yuv")


def test_8k_frame_with_a_large_face():
    patch = face_patch(2400)
    if patch is None:
        pytest.skip("needs test-helen")
    frame = np.zeros((4320, 7680, 3), np.uint8)
    frame[900:3300, 2600:5000] = patch
    stub = StubPredictor()
    res = FacePipeline(stub)(frame)
    assert len(res.faces) == 1
    b = res.faces[0].box
    assert 2500 < (b[0] + b[2]) / 2 < 5100 and 800 < (b[1] + b[3]) / 2 < 3400
    assert np.isfinite(res.faces[0].landmarks).all()
    parsing = FacePipeline(StubPredictor("farl-small-celebm"))(frame)
    face = parsing.faces[0]
    assert face.label_map.shape[0] < 4320 and face.label_map.size > 0  # a region, not the 8K frame


def test_face_cut_by_the_border(stub_pipe):
    bgr, pts = _helen(6)
    x0, x1 = pts[:, 0].min(), pts[:, 0].max()
    cut = bgr[:, int(x0 + 0.25 * (x1 - x0)):]  # the left quarter of the face is outside the frame
    res = stub_pipe(cut)
    assert res.faces and res.faces[0].box[0] < 0  # found, and its box crosses the border
    for face in res.faces:
        assert np.isfinite(face.landmarks).all() and np.isfinite(face.box).all()
    parsing = FacePipeline(StubPredictor("farl-small-celebm"))(cut)
    assert parsing.faces
    for face in parsing.faces:
        x0, y0 = face.label_origin
        assert x0 >= 0 and y0 >= 0
        assert y0 + face.label_map.shape[0] <= cut.shape[0] and x0 + face.label_map.shape[1] <= cut.shape[1]


def test_to_rgb_u8_conversions():
    a = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_u8(a, "bgr"), a[:, :, ::-1])
    np.testing.assert_array_equal(to_rgb_u8(a, "rgb"), a)
    np.testing.assert_array_equal(to_rgb_u8(a.astype(np.uint16) * 257, "rgb"), a)
    np.testing.assert_array_equal(to_rgb_u8(np.dstack([a, a[:, :, :1]]), "rgb"), a)
    np.testing.assert_array_equal(to_rgb_u8(a[:, :, 0]), np.repeat(a[:, :, :1], 3, 2))


# ----------------------------------------------------------------------------- overlays
def test_draw_result_on_any_frame():
    from farl_edge.runtime.draw import draw_result

    bgr, _ = _helen(0)
    for name in ("farl-small-300w", "farl-small-celebm"):
        res = FacePipeline(StubPredictor(name))(bgr)
        out = draw_result(bgr, res, fps=30.0)
        assert out.shape == bgr.shape and out.dtype == np.uint8 and not np.array_equal(out, bgr)
        assert draw_result(_gray(bgr), res).shape == bgr.shape
        assert draw_result(bgr, res, color="rgb", timings=False).shape == bgr.shape
    assert draw_result(None, res) is None

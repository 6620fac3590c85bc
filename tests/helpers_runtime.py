"""Shared pieces of the runtime tests: a fast stand-in model and synthetic frames / videos."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from farl_edge.registry import get_config

ROOT = Path(__file__).resolve().parents[1]
HELEN = ROOT.parent / "shared" / "data" / "300w" / "test-helen"


class StubPredictor:
    """A predictor with a registry model's config whose outputs are cheap, deterministic functions
    of the input crop (the runtime plumbing under test does not care what the network is)."""

    def __init__(self, name: str = "farl-small-300w"):
        self.config = get_config(name)
        self.calls = 0
        self.faces = 0
        rng = np.random.default_rng(0)
        self._w = rng.normal(size=(self.config.num_outputs or 4, 3)).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        s = self.config.input_size
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, s, s), batch.shape
        self.calls += 1
        self.faces += batch.shape[0]
        b = batch.shape[0]
        if self.config.task == "alignment":
            k = self.config.num_landmarks
            t = np.linspace(0.3, 0.7, k, dtype=np.float32)
            lm = np.stack([t, t[::-1]], -1)[None] * s + batch.mean(axis=(1, 2, 3))[:, None, None]
            return {"landmarks": lm.astype(np.float32), "heatmaps": np.zeros((b, k, 1, 1), np.float32)}
        if self.config.task == "parsing":
            small = batch[:, :, 2::4, 2::4] - 0.5  # (B, 3, s/4, s/4)
            return {"logits": np.einsum("kc,bchw->bkhw", self._w, small).astype(np.float32)}
        return {"embedding": batch.mean(axis=(2, 3))}


class OrtStubPredictor(StubPredictor):
    """StubPredictor's alignment outputs computed by an ONNX Runtime session (the runtime's own
    onnxruntime backend) running a tiny ONNX graph, so a loop under test runs real ORT inference."""

    def __init__(self, folder: Path, name: str = "farl-small-300w"):
        import onnx
        from onnx import TensorProto, helper

        from farl_edge.runtime.backends.onnxruntime_backend import OrtRunner

        super().__init__(name)
        assert self.config.task == "alignment"
        s, k = self.config.input_size, self.config.num_landmarks
        t = np.linspace(0.3, 0.7, k, dtype=np.float32)
        base = (np.stack([t, t[::-1]], -1)[None] * s).astype(np.float32)  # (1, K, 2)
        consts = [helper.make_tensor("base", TensorProto.FLOAT, base.shape, base.ravel()),
                  helper.make_tensor("zeros", TensorProto.FLOAT, (1, k, 1, 1), np.zeros(k, np.float32)),
                  helper.make_tensor("axes", TensorProto.INT64, (3,), [1, 2, 3]),
                  helper.make_tensor("last", TensorProto.INT64, (1,), [3])]
        nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean4"], keepdims=1),  # (B, 1, 1, 1)
                 helper.make_node("Squeeze", ["mean4", "last"], ["mean3"]),  # (B, 1, 1)
                 helper.make_node("Add", ["base", "mean3"], ["landmarks"]),  # (B, K, 2)
                 helper.make_node("Mul", ["mean4", "zeros"], ["heatmaps"])]  # (B, K, 1, 1)
        graph = helper.make_graph(
            nodes, "stub", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, s, s])],
            [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["batch", k, 2]),
             helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["batch", k, 1, 1])], consts)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        path = Path(folder) / "stub.onnx"
        onnx.save(model, str(path))
        self.runner = OrtRunner(path, threads=1)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        s = self.config.input_size
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, s, s), batch.shape
        self.calls += 1
        self.faces += batch.shape[0]
        return self.runner.run(batch)


def helen_files() -> list[Path]:
    return sorted(HELEN.glob("*.jpg")) if HELEN.is_dir() else []


def face_patch(size: int = 80) -> np.ndarray | None:
    """A real face (BGR, ``size``²) cut from the first test-helen photo, or None without the data."""
    files = helen_files()
    if not files:
        return None
    from farl_edge.datasets.ibug300w import read_pts

    img = cv2.imread(str(files[0]))
    pts = read_pts(files[0].with_suffix(".pts")) - 0.5
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    side = max(x1 - x0, y1 - y0) * 1.6
    crop = cv2.getRectSubPix(img, (int(side), int(side)), (float((x0 + x1) / 2), float((y0 + y1) / 2)))
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def drawn_face(size: int = 80) -> np.ndarray:
    """A face-like drawing (skin disc, eyes, nose, mouth), BGR."""
    img = np.full((size, size, 3), 90, np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (int(size * 0.32), int(size * 0.42)), 0, 0, 360, (120, 160, 220), -1)
    for dx in (-1, 1):
        cv2.circle(img, (c + dx * size // 7, int(c - size * 0.08)), max(2, size // 20), (40, 30, 30), -1)
    cv2.line(img, (c, c), (c, int(c + size * 0.1)), (90, 110, 170), 2)
    cv2.ellipse(img, (c, int(c + size * 0.22)), (size // 8, size // 20), 0, 0, 360, (60, 60, 170), -1)
    return img


def write_video(path: Path, frames: int = 1000, hw=(120, 160), fps: float = 30.0) -> tuple[Path, bool]:
    """A small MJPG video with a face moving left and right; returns (path, real_face)."""
    patch = face_patch(80)
    real = patch is not None
    if patch is None:
        patch = drawn_face(80)
    h, w = hw
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    ph, pw = patch.shape[:2]
    for i in range(frames):
        frame = np.full((h, w, 3), 90, np.uint8)
        ox = (w - pw) // 2 + int(round((w - pw) / 2 * 0.8 * np.sin(i / 25)))
        oy = (h - ph) // 2
        frame[oy:oy + ph, ox:ox + pw] = patch
        writer.write(frame)
    writer.release()
    return path, real

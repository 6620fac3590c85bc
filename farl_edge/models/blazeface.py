"""BlazeFace short-range face detector (MediaPipe's ``face_detection_short_range``) in PyTorch.

A re-implementation of the network MediaPipe ships as ``face_detection_short_range.tflite``
(Apache-2.0); ``runtimes/tools/convert_blazeface.py`` reads that file's weights into this module
once and exports the ONNX detector the torch-free runtime ships (``farl_edge/data/detector``).

Network (TFLite names in brackets): a 5×5 stride-2 conv (``conv2d``) and 16 BlazeBlocks, each
``x + pad_channels(pool(x))`` → ReLU around a 3×3 depthwise conv (``depthwise_conv2d_i``) and a
1×1 conv (``conv2d_{i+1}``); stride-2 blocks max-pool the shortcut. TFLite's ``SAME`` padding is
asymmetric for stride 2 (nothing before, the remainder after), reproduced with explicit pads.
Two SSD heads read the 16×16×88 map (2 anchors per cell) and the 8×8×96 map (6 per cell):
``classificator_{8,16}`` (1 logit per anchor) and ``regressor_{8,16}`` (16 numbers per anchor:
box centre offset x, y, size w, h, then 6 keypoints x, y; in 128-pixel units, relative to the
anchor centre).

:class:`BlazeFaceDetector` wraps the network with the input normalisation (RGB in [0, 1] →
[-1, 1]) and MediaPipe's decoding (``TensorsToDetectionsCalculator`` with the face detector's
options), so the exported graph maps a (B, 3, 128, 128) batch to per-anchor ``scores`` (B, 896)
(sigmoid of the logit clipped to ±100), ``boxes`` (B, 896, 4) as x0, y0, x1, y1 and
``keypoints`` (B, 896, 6, 2), both in continuous input pixels (0..128). Non-maximum suppression
stays outside the graph (``farl_edge.runtime.detector``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 128
NUM_ANCHORS = 896
NUM_KEYPOINTS = 6
SCORE_CLIP = 100.0
# (in, out, stride) of the 16 BlazeBlocks, as in the TFLite graph
BLOCKS = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1),
          (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1),  # → 16×16×88
          (88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1)]  # → 8×8×96
HEADS = {"classificator_8": (88, 2), "classificator_16": (96, 6), "regressor_8": (88, 32), "regressor_16": (96, 96)}


def ssd_anchors(input_size: int = INPUT_SIZE) -> np.ndarray:
    """(896, 2) anchor centres in [0, 1] (x, y) — MediaPipe's SsdAnchorsCalculator with the face
    detector's options (4 layers, strides 8, 16, 16, 16, aspect ratio 1 + the interpolated one,
    fixed anchor size 1, offset 0.5): 2 anchors per cell at stride 8, 6 per cell at stride 16
    (the three stride-16 layers are merged)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = int(np.ceil(input_size / stride))
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        centres = np.stack([xs, ys], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    anchors = np.concatenate(out).astype(np.float32)
    assert anchors.shape == (NUM_ANCHORS, 2)
    return anchors


class BlazeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.extra_channels = cout - cin
        self.depthwise = nn.Conv2d(cin, cin, 3, stride=stride, padding=1 if stride == 1 else 0, groups=cin)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            h = self.depthwise(F.pad(x, (0, 1, 0, 1)))  # TFLite SAME, stride 2, even size
            x = F.max_pool2d(x, 2, 2)
        else:
            h = self.depthwise(x)
        h = self.pointwise(h)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(x + h)


class BlazeFace(nn.Module):
    """The raw network: (B, 3, 128, 128) in [-1, 1] → (regressors (B, 896, 16), logits (B, 896))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 5, stride=2)
        self.blocks = nn.ModuleList(BlazeBlock(*b) for b in BLOCKS)
        self.heads = nn.ModuleDict({name: nn.Conv2d(cin, cout, 1) for name, (cin, cout) in HEADS.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv(F.pad(x, (1, 2, 1, 2))))  # TFLite SAME for 5×5 stride 2
        for block in self.blocks[:11]:
            x = block(x)
        f16 = x  # 16×16×88
        for block in self.blocks[11:]:
            x = block(x)
        f8 = x  # 8×8×96
        b = x.shape[0]

        def flat(t: torch.Tensor, k: int) -> torch.Tensor:  # NCHW → (B, H*W*anchors, k), TFLite's NHWC order
            return t.permute(0, 2, 3, 1).reshape(b, -1, k)

        logits = torch.cat([flat(self.heads["classificator_8"](f16), 1), flat(self.heads["classificator_16"](f8), 1)], 1)
        regress = torch.cat([flat(self.heads["regressor_8"](f16), 16), flat(self.heads["regressor_16"](f8), 16)], 1)
        return regress, logits[..., 0]

    # --------------------------------------------------------------------------- weights
    def tflite_names(self) -> dict[str, str]:
        """{our parameter name: TFLite tensor name} (kernels ``.../Kernel``, biases ``.../Bias``)."""
        names = {"conv": "conv2d"}
        for i in range(len(self.blocks)):
            names[f"blocks.{i}.depthwise"] = "depthwise_conv2d" + (f"_{i}" if i else "")
            names[f"blocks.{i}.pointwise"] = f"conv2d_{i + 1}"
        for head in HEADS:
            names[f"heads.{head}"] = head
        out = {}
        for module, tfl in names.items():
            out[f"{module}.weight"] = f"{tfl}/Kernel"
            out[f"{module}.bias"] = f"{tfl}/Bias"
        return out

    def load_tflite_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """Load float arrays named as in the TFLite file (NHWC-style kernels: conv ``(O, kh, kw, I)``,
        depthwise ``(1, kh, kw, C)``); every parameter must be found, with the right shape."""
        state = {}
        params = dict(self.named_parameters())
        for ours, theirs in self.tflite_names().items():
            if theirs not in tensors:
                raise KeyError(f"TFLite tensor {theirs!r} (for {ours}) not found")
            arr = np.asarray(tensors[theirs], dtype=np.float32)
            if arr.ndim == 4:
                arr = arr.transpose(3, 0, 1, 2) if ".depthwise." in ours else arr.transpose(0, 3, 1, 2)
            if tuple(arr.shape) != tuple(params[ours].shape):
                raise ValueError(f"{theirs}: shape {arr.shape} does not fit {ours} {tuple(params[ours].shape)}")
            state[ours] = torch.from_numpy(np.ascontiguousarray(arr))
        self.load_state_dict(state, strict=True)


class BlazeFaceDetector(nn.Module):
    """Exported graph: RGB [0, 1] (B, 3, 128, 128) → scores, boxes, keypoints (see module doc)."""

    output_names = ["scores", "boxes", "keypoints"]

    def __init__(self, net: BlazeFace | None = None):
        super().__init__()
        self.net = net or BlazeFace()
        self.register_buffer("anchors", torch.from_numpy(ssd_anchors() * INPUT_SIZE), persistent=False)

    def forward(self, x: torch.Tensor):
        regress, logits = self.net(x * 2.0 - 1.0)
        scores = torch.sigmoid(logits.clamp(-SCORE_CLIP, SCORE_CLIP))
        # reverse_output_order: x before y; scales 128; anchors of size 1 (in 0..1 units) → offsets in pixels
        centre = regress[..., 0:2] + self.anchors
        half = regress[..., 2:4] * 0.5
        boxes = torch.cat([centre - half, centre + half], -1)
        keypoints = regress[..., 4:16].reshape(x.shape[0], NUM_ANCHORS, NUM_KEYPOINTS, 2) + self.anchors[:, None, :]
        return scores, boxes, keypoints


def decode_raw(regress: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy twin of :class:`BlazeFaceDetector`'s decoding, for raw TFLite outputs
    (regressors (B, 896, 16), classificators (B, 896[, 1]))."""
    anchors = ssd_anchors() * INPUT_SIZE
    regress = np.asarray(regress, np.float64)
    logits = np.asarray(logits, np.float64).reshape(regress.shape[0], NUM_ANCHORS)
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -SCORE_CLIP, SCORE_CLIP)))
    centre = regress[..., 0:2] + anchors
    half = regress[..., 2:4] * 0.5
    boxes = np.concatenate([centre - half, centre + half], -1)
    keypoints = regress[..., 4:16].reshape(-1, NUM_ANCHORS, NUM_KEYPOINTS, 2) + anchors[:, None, :]
    return scores, boxes, keypoints


def load_from_onnx(path: str | Path) -> BlazeFaceDetector:
    """The PyTorch detector with the weights of a shipped ONNX detector (initializers by name)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    det = BlazeFaceDetector()
    state = det.state_dict()
    for k, v in state.items():  # MediaPipe's depthwise biases are all zero; the exporter drops them
        if k not in inits and k.endswith("depthwise.bias"):
            inits[k] = np.zeros(tuple(v.shape), np.float32)
    missing = [k for k in state if k not in inits]
    if missing:
        raise ValueError(f"{path}: no initializers for {missing[:5]}… (not exported by convert_blazeface.py?)")
    det.load_state_dict({k: torch.from_numpy(np.array(inits[k])) for k in state}, strict=True)
    return det.eval()

#!/usr/bin/env python
"""Convert MediaPipe's BlazeFace short-range detector into the ONNX detector farl-edge ships.

Run ONCE by a maintainer; the result is committed as package data in ``farl_edge/data/detector/``:

    pip download mediapipe==0.10.21 --no-deps -d /tmp/mp        # 35 MB wheel, never installed
    pip install --target /tmp/tflitepkg tflite                   # flatbuffer reader for .tflite
    pip install --no-deps --target /tmp/litert ai-edge-litert    # optional: reference interpreter
    PYTHONPATH=/tmp/tflitepkg python runtimes/tools/convert_blazeface.py \
        --wheel /tmp/mp/mediapipe-0.10.21-*.whl --litert /tmp/litert \
        --calibrate ../shared/data/300w/train

Steps:
1. read ``mediapipe/modules/face_detection/face_detection_short_range.tflite`` and the wheel's
   Apache-2.0 ``LICENSE`` from the wheel (a zip file);
2. parse the TFLite flatbuffer (``tflite`` package), dequantise its float16 weights and load them
   into :class:`farl_edge.models.blazeface.BlazeFace` by tensor name;
3. with ``--litert``: compare the PyTorch network with TFLite's own interpreter on random inputs
   and real faces (raw outputs and decoded boxes);
4. export :class:`~farl_edge.models.blazeface.BlazeFaceDetector` (normalisation + decoding) to
   one ONNX file with a dynamic batch, and check it against PyTorch on ONNX Runtime;
5. with ``--calibrate``: fit, on annotated 300-W training faces, how the detector's box and
   keypoints relate to FaRL's conventions (the 68-landmark box alignment crops are trained on,
   the mouth corners of FaRL's 5 points) — see ``farl_edge/runtime/detector.py``;
6. write ``blazeface_short_range.onnx``, ``blazeface_short_range.json`` (options, calibration,
   provenance, verification numbers), ``LICENSE`` and ``NOTICE``.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TFLITE_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
LICENSE_MEMBER = "mediapipe-0.10.21.dist-info/LICENSE"
OUT_DIR = ROOT / "farl_edge" / "data" / "detector"
NAME = "blazeface_short_range"

NOTICE = """\
farl-edge face detector: blazeface_short_range.onnx

This file is a converted copy of MediaPipe's BlazeFace short-range face detection model
("face_detection_short_range.tflite", from the mediapipe 0.10.21 Python wheel, path
mediapipe/modules/face_detection/face_detection_short_range.tflite, sha256 {sha}).

MediaPipe is Copyright 2019-2025 The MediaPipe Authors / Google LLC and is licensed under the
Apache License, Version 2.0 (see LICENSE in this folder, copied from the same wheel).

Changes made by farl-edge (runtimes/tools/convert_blazeface.py): the float16 weights were
dequantised to float32 and re-expressed as an ONNX graph (a PyTorch re-implementation of the
network, farl_edge/models/blazeface.py); the graph takes RGB in [0, 1] instead of [-1, 1] and
includes MediaPipe's anchor decoding (scores, boxes, keypoints in input pixels). The weights'
values are unchanged.
"""


# ----------------------------------------------------------------------------- TFLite reading
def read_wheel(wheel: Path) -> tuple[bytes, str]:
    with zipfile.ZipFile(wheel) as z:
        model = z.read(TFLITE_MEMBER)
        license_text = z.read(LICENSE_MEMBER).decode()
    return model, license_text


def tflite_tensors(buf: bytes) -> dict[str, np.ndarray]:
    """{tensor name: float32 array} of every constant float tensor in the TFLite model."""
    import tflite

    types = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32}
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    out = {}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        if t.Type() not in types:
            continue
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            continue  # activations have no buffer
        shape = tuple(int(s) for s in t.ShapeAsNumpy())
        out[t.Name().decode()] = np.frombuffer(data.tobytes(), dtype=types[t.Type()]).reshape(shape).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- test inputs
def real_faces(folder: Path | None, count: int) -> list[np.ndarray]:
    """Letterboxed 128×128 RGB [0, 1] inputs from real photos (empty without a folder)."""
    if folder is None or not folder.exists():
        return []
    from farl_edge.runtime.detector import letterbox

    import cv2

    files = sorted(folder.glob("*.jpg"))[:count]
    out = []
    for f in files:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        img, _ = letterbox(rgb, 128)
        out.append(img.astype(np.float32) / 255)
    return out


def run_litert(litert_dir: Path, model_path: Path, inputs: list[np.ndarray]):
    sys.path.insert(0, str(litert_dir))
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path))
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = {d["name"]: d["index"] for d in it.get_output_details()}
    regs, logits = [], []
    for x in inputs:
        it.set_tensor(inp, (x[None] * 2 - 1).astype(np.float32))  # NHWC, [-1, 1]
        it.invoke()
        regs.append(it.get_tensor(outs["regressors"])[0].copy())
        logits.append(it.get_tensor(outs["classificators"])[0, :, 0].copy())
    return np.stack(regs), np.stack(logits)


def verify_against_litert(net, litert_dir: Path, model_path: Path, inputs: list[np.ndarray]) -> dict:
    import torch

    from farl_edge.models.blazeface import decode_raw

    reg_ref, log_ref = run_litert(litert_dir, model_path, inputs)
    x = torch.from_numpy(np.stack(inputs).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        reg, log = net(x * 2 - 1)
    reg, log = reg.numpy(), log.numpy()
    s_ref, b_ref, k_ref = decode_raw(reg_ref, log_ref)
    s, b, k = decode_raw(reg, log)
    confident = s_ref > 0.5
    return {
        "inputs": len(inputs),
        "max_abs_regressors": float(np.abs(reg - reg_ref).max()),
        "max_abs_logits": float(np.abs(log - log_ref).max()),
        "max_abs_scores": float(np.abs(s - s_ref).max()),
        "max_abs_box_px_at_score_gt_0.5": float(np.abs(b - b_ref)[confident].max()) if confident.any() else None,
        "max_abs_keypoint_px_at_score_gt_0.5": float(np.abs(k - k_ref)[confident].max()) if confident.any() else None,
        "anchors_above_0.5": int(confident.sum()),
    }


# ----------------------------------------------------------------------------- export
def export_onnx(det, path: Path) -> None:
    import io
    import contextlib
    import warnings

    import onnx
    import torch

    tmp = path.with_suffix(".tmp.onnx")
    example = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(det, (example,), str(tmp), input_names=["input"], output_names=det.output_names,
                          opset_version=18, dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256)},))
    model = onnx.load(str(tmp))
    for extra in tmp.parent.glob(tmp.name + "*"):
        extra.unlink()
    model.producer_name = "farl-edge convert_blazeface.py"
    meta = model.metadata_props.add()
    meta.key, meta.value = "source", "MediaPipe face_detection_short_range.tflite (Apache-2.0), see NOTICE"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def check_onnx(det, path: Path, inputs: list[np.ndarray]) -> dict:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.stack(inputs).transpose(0, 3, 1, 2).astype(np.float32).copy()
    got = sess.run(None, {"input": x})
    with torch.no_grad():
        ref = [t.numpy() for t in det(torch.from_numpy(x))]
    return {f"max_abs_{n}": float(np.abs(a - b).max()) for n, a, b in zip(det.output_names, got, ref)}


# ----------------------------------------------------------------------------- calibration
def calibrate(onnx_path: Path, meta: dict, folder: Path, limit: int | None) -> dict:
    """Fit the detector → FaRL conventions on annotated faces (see runtime.detector)."""
    import cv2

    from farl_edge.datasets.ibug300w import read_pts
    from farl_edge.runtime.detector import FaceDetector, fit_calibration

    det = FaceDetector(onnx_path, meta=meta, threads=2)
    pairs = []
    files = sorted(folder.glob("*.jpg"))[:limit]
    for f in files:
        pts = read_pts(f.with_suffix(".pts")) - 0.5  # 1-based → continuous coordinates
        bgr = cv2.imread(str(f))
        dets = det.detect(bgr, color="bgr")
        if not dets:
            continue
        centre = pts.mean(0)
        best = max(dets, key=lambda d: -np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - centre))
        x0, y0, x1, y1 = best.box
        if not (x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1):
            continue
        pairs.append((best, pts))
    cal, report = fit_calibration([p[0] for p in pairs], [p[1] for p in pairs])
    report["faces"] = len(files)
    report["matched"] = len(pairs)
    return {"calibration": cal, "report": report}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", help="mediapipe-0.10.21 wheel (pip download mediapipe==0.10.21 --no-deps)")
    ap.add_argument("--tflite", help="face_detection_short_range.tflite (instead of --wheel; then --license too)")
    ap.add_argument("--license", help="MediaPipe's LICENSE file (with --tflite)")
    ap.add_argument("--litert", type=Path, help="folder with ai_edge_litert (pip install --target) for verification")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "300w" / "test-helen",
                    help="real photos for the verification")
    ap.add_argument("--calibrate", type=Path, help="300-W style folder (NAME.jpg + NAME.pts) to calibrate on")
    ap.add_argument("--calibrate-limit", type=int, default=None)
    ap.add_argument("--output", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)

    from farl_edge.models.blazeface import BlazeFace, BlazeFaceDetector

    if args.wheel:
        wheel = Path(sorted(glob.glob(args.wheel))[0])
        buf, license_text = read_wheel(wheel)
        source = {"wheel": wheel.name, "member": TFLITE_MEMBER}
    elif args.tflite and args.license:
        buf, license_text = Path(args.tflite).read_bytes(), Path(args.license).read_text()
        source = {"file": Path(args.tflite).name}
    else:
        ap.error("pass --wheel, or --tflite with --license")
    sha = hashlib.sha256(buf).hexdigest()
    source["sha256"] = sha
    args.output.mkdir(parents=True, exist_ok=True)
    work = args.output / ".work"
    work.mkdir(exist_ok=True)
    tfl_path = work / "face_detection_short_range.tflite"
    tfl_path.write_bytes(buf)

    tensors = tflite_tensors(buf)
    net = BlazeFace()
    net.load_tflite_tensors(tensors)
    net.eval()
    used = set(net.tflite_names().values())
    unused = sorted(n for n in tensors if n not in used and not n.endswith("Paddings"))
    print(f"loaded {len(used)} TFLite tensors; unused float tensors: {unused or 'none'}")

    rng = np.random.default_rng(0)
    inputs = [rng.random((128, 128, 3), dtype=np.float32) for _ in range(4)] + real_faces(args.faces, 28)
    verification = {}
    if args.litert:
        verification["pytorch_vs_tflite"] = verify_against_litert(net, args.litert, tfl_path, inputs)
        print("PyTorch vs TFLite interpreter:", json.dumps(verification["pytorch_vs_tflite"], indent=1))

    det = BlazeFaceDetector(net).eval()
    onnx_path = args.output / f"{NAME}.onnx"
    export_onnx(det, onnx_path)
    verification["onnx_vs_pytorch"] = check_onnx(det, onnx_path, inputs)
    print("ONNX Runtime vs PyTorch:", verification["onnx_vs_pytorch"])

    from farl_edge.runtime.detector import DEFAULT_META

    meta = json.loads(json.dumps(DEFAULT_META))
    meta.update({"model_file": onnx_path.name, "source": source, "verification": verification,
                 "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()})
    if args.calibrate:
        cal = calibrate(onnx_path, meta, args.calibrate, args.calibrate_limit)
        meta["calibration"] = cal["calibration"]
        meta["calibration_report"] = {"data": f"300w/{args.calibrate.name}", **cal["report"]}
        print("calibration:", json.dumps(cal, indent=1))
    (args.output / f"{NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")
    (args.output / "LICENSE").write_text(license_text)
    (args.output / "NOTICE").write_text(NOTICE.format(sha=sha))
    tfl_path.unlink()
    work.rmdir()
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), {NAME}.json, LICENSE, NOTICE")
    return 0


if __name__ == "__main__":
    sys.exit(main())

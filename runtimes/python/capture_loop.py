#!/usr/bin/env python
"""Minimal camera loop on the farl-edge runtime (no torch): copy this into your app.

    pip install farl-edge                      # the base install is the runtime
    farl-edge export --model farl-small-celebm --target onnx --output parsing   # once, on a dev machine
    python capture_loop.py parsing 0           # camera 0; or a video file; writes overlay.mp4

Each result is plain data in frame coordinates: ``face.box`` (x0, y0, x1, y1), ``face.score``,
``face.five_points`` (5, 2), ``face.landmarks`` (K, 2) for alignment models, ``face.label_map``
(+ ``face.label_origin``) for parsing models, with ``result.labels`` naming the label ids.
Phones already have a face detector: pass its boxes instead of running BlazeFace, e.g.
``CaptureLoop(pipe, source, detections=lambda frame: {"boxes": my_boxes(frame)})`` or, per frame,
``pipe(frame, boxes=...)`` / ``pipe(frame, five_points=...)``.
"""
import sys

import cv2

from farl_edge.runtime.draw import draw_result
from farl_edge.runtime.pipeline import FacePipeline
from farl_edge.runtime.video import CaptureLoop


def main(artifact: str, source: str = "0", output: str = "overlay.mp4", max_frames: int = 300) -> None:
    pipe = FacePipeline(artifact, threads=2)  # artifact folder from `farl-edge export`
    writer = None
    # cameras drop stale frames (never lag); files are read completely; One-Euro smoothing across frames
    with CaptureLoop(pipe, int(source) if source.isdigit() else source, color="bgr",
                     smoothing="one_euro", max_frames=max_frames) as loop:
        for frame, result in loop:
            # your app's logic goes here, e.g. [f.landmarks for f in result.faces], result.merged_label_map()
            shown = draw_result(frame, result, color="bgr", fps=loop.stats.fps)
            if shown is None:  # an empty frame from the camera
                continue
            if writer is None:
                h, w = shown.shape[:2]
                writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
            writer.write(shown)
    if writer is not None:
        writer.release()
    s = loop.stats
    print(f"{s.processed} frames ({s.dropped} stale frames dropped), {s.fps:.1f} FPS; mean ms: "
          + ", ".join(f"{k} {v:.1f}" for k, v in s.stage_ms.items()))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:3])

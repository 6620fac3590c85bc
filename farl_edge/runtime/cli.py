"""``farl-edge run``: an exported model on images, a folder, a video or a camera, with overlays.

    farl-edge run --model artifacts/farl-small-celebm-onnx-fp32 --source photo.jpg --output out.jpg
    farl-edge run --model ART --source photos/ --output annotated/
    farl-edge run --model ART --source clip.mp4 --output clip-annotated.mp4
    farl-edge run --model ART --source 0 --show            # camera 0 (needs a GUI build of OpenCV)

Torch-free: only the runtime is imported.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from farl_edge.fileio import creatable_in
from farl_edge.utils import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def register(subparsers) -> None:
    from farl_edge.cli import positive_int, unit_float

    p = subparsers.add_parser("run", help="run an exported model on images, a video or a camera, with overlays",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="exported artifact folder (farl-edge export --output DIR)")
    p.add_argument("--source", required=True, help="image file, image folder, video file, or camera index (0, 1, ...)")
    p.add_argument("--output", help="image file / folder for images, video file (.mp4, .avi) for videos and cameras; "
                                    "never an input file; existing files are kept unless --force")
    p.add_argument("--force", action="store_true", help="overwrite existing output files (never the inputs)")
    p.add_argument("--show", action="store_true", help="show the overlay in a window (q / Esc quits)")
    p.add_argument("--color", choices=["bgr", "rgb"], default="bgr",
                   help="channel order of the frames (OpenCV sources give bgr)")
    p.add_argument("--backend", help="runtime backend instead of the artifact's (onnxruntime, openvino)")
    p.add_argument("--threads", type=positive_int, help="inference threads")
    p.add_argument("--max-faces", type=positive_int, default=16)
    p.add_argument("--min-score", type=unit_float, help="face detector score threshold in [0, 1] (default 0.5)")
    p.add_argument("--smooth", choices=["none", "one_euro", "ema"], default="none",
                   help="landmark / crop smoothing across video frames")
    p.add_argument("--max-frames", type=positive_int, help="stop after N frames (videos, cameras)")
    p.add_argument("--json", help="write one JSON line per frame (boxes, points, landmarks, timings)")
    p.add_argument("--no-overlay-text", action="store_true", help="no FPS / timing text on the output")
    p.set_defaults(func=cmd_run)


def _user_error(msg: str) -> Exception:
    from farl_edge.cli import UserError

    return UserError(msg)


def _classify(source: str) -> str:
    if source.isdigit():
        return "camera"
    path = Path(source)
    if "://" in source:
        return "video"
    if not path.exists():
        raise _user_error(f"source {source} does not exist")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise _user_error(f"source {source}: unknown file type {suffix!r} (images: {', '.join(IMAGE_SUFFIXES)}; "
                      f"videos: {', '.join(VIDEO_SUFFIXES)})")


class _Window:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        if enabled:
            import cv2

            try:
                cv2.namedWindow("farl-edge", cv2.WINDOW_NORMAL)
            except cv2.error:
                raise _user_error("--show needs an OpenCV build with GUI support (pip install opencv-python, "
                                  "not opencv-python-headless); use --output instead") from None

    def show(self, image) -> bool:
        """False when the user asked to quit."""
        if not self.enabled or image is None:
            return True
        import cv2

        cv2.imshow("farl-edge", image)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self):
        if self.enabled:
            import cv2

            cv2.destroyAllWindows()


class _Summary:
    def __init__(self):
        self.frames = self.faces = self.empty = self.errors = 0
        self.sums: dict[str, float] = {}
        self.started = time.perf_counter()

    def add(self, result) -> None:
        self.frames += 1
        self.faces += len(result.faces)
        self.empty += not result.faces
        self.errors += bool(result.error)
        for k, v in result.timings.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def text(self) -> str:
        if not self.frames:
            return "no frames processed"
        wall = time.perf_counter() - self.started
        stages = ", ".join(f"{k} {v / self.frames:.1f}" for k, v in self.sums.items())
        return (f"{self.frames} frame(s), {self.faces} face(s), {self.empty} without faces"
                + (f", {self.errors} unusable" if self.errors else "")
                + f"; mean ms: {stages}; {self.frames / wall:.1f} frames/s overall")


def _image_jobs(kind: str, source: Path, output: str | None) -> list[tuple[Path, Path | None]]:
    """(input, output) pairs. An output keeps its input's name and format, so names are unique."""
    if kind == "image":
        if output is None:
            return [(source, None)]
        out = Path(output)
        if out.is_dir() or output.endswith(("/", "\\")) or not out.suffix:
            return [(source, out / source.name)]
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            raise _user_error(f"--output {output}: an image source writes an image ({', '.join(IMAGE_SUFFIXES)})")
        return [(source, out)]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise _user_error(f"folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if output is not None and Path(output).suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise _user_error(f"--output {output}: a folder source writes into a folder")
    out = Path(output) if output else None
    return [(f, out / f.relative_to(source) if out else None) for f in files]


def _check_outputs(jobs: list[tuple[Path, Path | None]], force: bool) -> None:
    """Refuse to write over any input, or over existing files without --force; checked before any work."""
    inputs = {src.resolve() for src, _ in jobs}
    clash = [dst for _, dst in jobs if dst is not None and dst.resolve() in inputs]
    if clash:
        raise _user_error(f"--output would overwrite the input {clash[0]}; choose another file or folder")
    if not force:
        existing = [dst for _, dst in jobs if dst is not None and dst.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise _user_error(f"{existing[0]} exists{more}; pass --force to overwrite, or choose another --output")
    for dst in {dst.parent / "x": dst for _, dst in jobs if dst is not None}.values():  # one check per folder
        creatable_in(dst, f"cannot write {dst}")


def _write_image(dst: Path, image) -> None:
    """Encode to a temporary sibling, then rename: never a half-written file at ``dst``."""
    import cv2

    from farl_edge.fileio import atomic_write

    ok, data = cv2.imencode(dst.suffix.lower(), image)
    if not ok:
        raise _user_error(f"could not encode {dst} ({dst.suffix})")
    atomic_write(dst, data.tobytes())


class _PartialFile:
    """A text file written under a temporary sibling name; ``publish`` renames it into place."""

    def __init__(self, path: Path):
        from farl_edge.fileio import pid_prefix

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.tmp = path, path.with_name(pid_prefix(path.name) + "x")
        self.f = open(self.tmp, "w")  # noqa: SIM115 - closed by publish / discard

    def write(self, text: str) -> None:
        self.f.write(text)

    def publish(self) -> None:
        from farl_edge.fileio import file_mode

        self.f.close()
        os.chmod(self.tmp, file_mode())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def cmd_run(args) -> int:
    import cv2
    from tqdm.auto import tqdm

    from farl_edge.runtime.draw import draw_result
    from farl_edge.runtime.pipeline import FacePipeline

    kind = _classify(args.source)
    model = Path(args.model)
    if not model.is_dir():
        raise _user_error(f"--model {args.model} is not an artifact folder (export one with `farl-edge export`)")
    if args.output and kind in ("video", "camera"):
        out = Path(args.output)
        if out.suffix.lower() not in FOURCC:
            raise _user_error(f"--output {args.output}: a video source writes a video file ({', '.join(FOURCC)})")
        if kind == "video" and Path(args.source).exists() and out.resolve() == Path(args.source).resolve():
            raise _user_error(f"--output would overwrite the input {args.source}; choose another file")
        _check_outputs([(Path(args.source), out)], args.force)
    jobs = None
    if kind in ("image", "folder"):
        jobs = _image_jobs(kind, Path(args.source), args.output)
        _check_outputs(jobs, args.force)
    if args.json:
        from farl_edge.fileio import check_output_file

        try:
            check_output_file(args.json, "--json")
        except ValueError as e:
            raise _user_error(str(e)) from None
    pipeline = FacePipeline(model, max_faces=args.max_faces, min_score=args.min_score, threads=args.threads,
                            backend=args.backend)
    window = _Window(args.show)
    summary = _Summary()
    jsonl = _PartialFile(Path(args.json)) if args.json else None
    text = not args.no_overlay_text

    def record(result, name=None):
        summary.add(result)
        if jsonl:
            d = result.to_dict()
            if name:
                d["source"] = name
            jsonl.write(json.dumps(d) + "\n")

    try:
        if kind in ("image", "folder"):
            bar = tqdm(jobs, desc=f"run {pipeline.config.name}", unit="img", disable=len(jobs) < 2)
            for src, dst in bar:
                image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
                if image is None:
                    bar.write(f"skipped {src}: not a readable image")
                    summary.errors += 1
                    continue
                result = pipeline(image, color=args.color)
                record(result, str(src))
                drawn = draw_result(image, result, color=args.color, timings=text)
                if dst is not None and drawn is not None:
                    _write_image(dst, drawn if args.color == "bgr" else cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                if not window.show(drawn):
                    break
                if kind == "image" and len(jobs) == 1:
                    print(f"{len(result.faces)} face(s); " + ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings.items()))
            if args.show and kind == "image":
                cv2.waitKey(0)
        else:
            _run_video(args, kind, pipeline, window, record, text)
        if jsonl:
            jsonl.publish()
    finally:
        window.close()
        if jsonl:
            jsonl.discard()
    print(summary.text())
    if summary.frames == 0:
        print("farl-edge run: error: no input could be processed", file=sys.stderr)
        return 1
    return 0


def _run_video(args, kind, pipeline, window, record, text) -> None:
    import cv2
    from tqdm.auto import tqdm

    from farl_edge.runtime.draw import draw_result
    from farl_edge.runtime.video import CaptureLoop

    smoothing = None if args.smooth == "none" else args.smooth
    try:
        loop = CaptureLoop(pipeline, args.source if kind == "video" else int(args.source), color=args.color,
                           smoothing=smoothing, max_frames=args.max_frames)
    except FileNotFoundError as e:
        raise _user_error(str(e)) from None
    total = loop.frame_count or None
    if args.max_frames and total:
        total = min(total, args.max_frames)
    from farl_edge.fileio import file_mode, pid_prefix, sweep_stale

    writer = partial = None
    if args.output:
        sweep_stale(Path(args.output).parent, Path(args.output).name)
    fps_out = loop.source.fps if loop.source.fps and loop.source.fps > 0 else 25.0
    bar = tqdm(total=total, desc=f"run {pipeline.config.name}", unit="frame", disable=kind == "camera" and not total)
    try:
        with loop:
            for frame, result in loop:
                record(result)
                drawn = draw_result(frame, result, color=args.color, fps=loop.stats.fps, timings=text,
                                    extra=f"dropped {loop.stats.dropped}" if loop.stats.dropped else None)
                bar.update(1)
                if drawn is None:
                    continue
                if args.output:
                    if writer is None:
                        h, w = drawn.shape[:2]
                        out = Path(args.output)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        # written under a temporary name (same suffix: it picks the container), renamed when final
                        partial = out.with_name(f"{pid_prefix(out.name)}{out.suffix}")
                        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*FOURCC[out.suffix.lower()]),
                                                 fps_out, (w, h))
                        if not writer.isOpened():
                            raise _user_error(f"could not open {out} for writing")
                        size = (w, h)
                    if (drawn.shape[1], drawn.shape[0]) != size:
                        drawn = cv2.resize(drawn, size, interpolation=cv2.INTER_AREA)
                    writer.write(drawn if args.color == "bgr" else cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                if not window.show(drawn):
                    break
        if writer is not None:
            writer.release()
            writer = None
            os.chmod(partial, file_mode())
            os.replace(partial, out)
    finally:
        bar.close()
        if writer is not None:  # interrupted or failed: the partial video is not published
            writer.release()
        if partial is not None and partial.exists():
            partial.unlink()

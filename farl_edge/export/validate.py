"""Parity validation of an exported artifact against the PyTorch model, on real face crops.

Checks, in order: output names → output shapes → values (cosine, max |Δ| per output, worst face)
→ task level (landmark disagreement in % of the inter-ocular distance and Δ NME_io; parsing pixel
agreement and Δ F1 mean). Names or shapes failing stop the run (later checks would be
meaningless). Any failed check raises :class:`ParityError`, whose message is the table.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from farl_edge.export.config import Tolerance

STAGES = ("names", "shapes", "values", "task")


@dataclass
class Check:
    stage: str
    name: str
    measured: object
    limit: object
    op: str  # ">=", "<=", "=="
    passed: bool
    detail: str = ""

    def row(self) -> list[str]:
        return [self.stage, self.name, _fmt(self.measured), f"{self.op} {_fmt(self.limit)}",
                "ok" if self.passed else "FAIL", self.detail]


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.6f}".rstrip("0").rstrip(".") if abs(v) < 1 else f"{v:.4f}"
    return str(v)


@dataclass
class ParityReport:
    checks: list[Check] = field(default_factory=list)
    faces: int = 0
    tolerance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # task metrics of reference and artifact

    def add(self, stage, name, measured, limit, op, detail="") -> Check:
        if op == ">=":
            ok = measured is not None and not _nan(measured) and measured >= limit
        elif op == "<=":
            ok = measured is not None and not _nan(measured) and measured <= limit
        else:
            ok = measured == limit
        check = Check(stage, name, measured, limit, op, bool(ok), detail)
        self.checks.append(check)
        return check

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def failure(self) -> str:
        """One line for a manifest: which checks failed."""
        return "validation failed: " + ", ".join(f"{c.stage}/{c.name}" for c in self.failed)

    def stage_ok(self, stage: str) -> bool:
        return all(c.passed for c in self.checks if c.stage == stage)

    def table(self, only_failed: bool = False) -> str:
        rows = [c.row() for c in self.checks if not (only_failed and c.passed)]
        header = ["stage", "check", "measured", "limit", "result", "detail"]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "faces": self.faces, "tolerance": self.tolerance,
                "metrics": self.metrics, "checks": [asdict(c) for c in self.checks]}


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


class ParityError(Exception):
    """The artifact does not match the PyTorch model; ``report`` holds every check."""

    def __init__(self, report: ParityReport, what: str = "artifact"):
        self.report = report
        failed = ", ".join(f"{c.stage}/{c.name}" for c in report.failed)
        super().__init__(f"{what} failed validation ({failed}):\n{report.table()}")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare(reference, candidate, samples: Sequence, tolerance: Tolerance, output_names: Sequence[str],
            batch_size: int = 8, raise_on_fail: bool = True) -> ParityReport:
    """Validate ``candidate`` (artifact session) against ``reference`` (PyTorch predictor)."""
    from farl_edge.evaluate import predict_samples

    cfg = reference.config
    report = ParityReport(faces=len(samples), tolerance=tolerance.to_dict())
    if not samples:
        raise ValueError("validation needs at least one face")

    # 1-2. names and shapes, on the first batch of real crops
    from farl_edge import crops
    from farl_edge.evaluate import prepare

    first = crops.to_tensor_layout(np.stack([prepare(s, cfg)[0] for s in samples[:batch_size]]))
    ref_out, cand_out = reference(first), candidate(first)
    expected = list(output_names)
    report.add("names", "outputs", sorted(cand_out), sorted(expected), "==",
               "" if sorted(cand_out) == sorted(expected) else f"artifact gives {sorted(cand_out)}")
    if not report.stage_ok("names"):
        return _finish(report, raise_on_fail)
    for name in expected:
        want, got = tuple(ref_out[name].shape), tuple(np.shape(cand_out[name]))
        report.add("shapes", name, got, want, "==")
    if not report.stage_ok("shapes"):
        return _finish(report, raise_on_fail)

    # 3-4. values and task level over the whole subset
    ref_preds = list(predict_samples(reference, samples, batch_size, keep_raw=True, progress=False))
    cand_preds = list(predict_samples(candidate, samples, batch_size, keep_raw=True, progress=False))
    for name in expected:
        cos = [cosine(r.raw[name], c.raw[name]) for r, c in zip(ref_preds, cand_preds)]
        scale = max(float(np.abs(r.raw[name]).max()) for r in ref_preds) or 1.0
        diff = [float(np.abs(np.asarray(r.raw[name], np.float64) - c.raw[name]).max())
                for r, c in zip(ref_preds, cand_preds)]
        worst = int(np.argmin(cos))
        report.add("values", f"{name} cosine", float(np.min(cos)), tolerance.cosine, ">=",
                   f"mean {np.mean(cos):.6f}; worst face {samples[worst].name or worst}")
        report.add("values", f"{name} max|Δ|/max|ref|", float(np.max(diff)) / scale, tolerance.max_abs, "<=",
                   f"max|Δ| {np.max(diff):.4g}, max|ref| {scale:.4g}")
    if cfg.task == "alignment":
        _task_alignment(report, cfg, samples, ref_preds, cand_preds, tolerance)
    elif cfg.task == "parsing":
        _task_parsing(report, cfg, samples, ref_preds, cand_preds, tolerance)
    return _finish(report, raise_on_fail)


def _finish(report: ParityReport, raise_on_fail: bool) -> ParityReport:
    if raise_on_fail and not report.passed:
        raise ParityError(report)
    return report


def _task_alignment(report, cfg, samples, ref_preds, cand_preds, tol: Tolerance) -> None:
    from farl_edge.evaluate import AUC_THRESHOLDS
    from farl_edge.metrics import AlignmentMeter, normalizer

    convention = cfg.dataset if cfg.dataset in AUC_THRESHOLDS else "300w"
    kind = "box" if convention == "aflw19" else "inter_ocular"
    annotated = [s.landmarks is not None for s in samples]
    disagreement = []
    for s, r, c in zip(samples, ref_preds, cand_preds):
        if s.landmarks is not None:
            norm = normalizer(s.landmarks, kind, convention, box=getattr(s, "box", None) if kind == "box" else None)
        else:  # no ground truth: the reference's own landmark box
            norm = normalizer(r.landmarks, "box", convention)
        disagreement.append(100.0 * float(np.linalg.norm(r.landmarks - c.landmarks, axis=-1).mean()) / float(norm))
    report.add("task", f"landmark disagreement (% {'IOD' if kind == 'inter_ocular' else 'box'})",
               float(np.mean(disagreement)), tol.landmark_disagreement, "<=", f"worst face {max(disagreement):.4f}")
    if not all(annotated):
        return
    metrics = {}
    for who, preds in (("reference", ref_preds), ("artifact", cand_preds)):
        meter = AlignmentMeter(convention, AUC_THRESHOLDS[convention])
        for s, p in zip(samples, preds):
            meter.update(p.landmarks, s.landmarks, box=getattr(s, "box", None))  # as evaluate: AFLW-19's face box
        metrics[who] = meter.summary()
    report.metrics = metrics
    key = "nme_box" if convention == "aflw19" else "nme_io"
    delta = metrics["artifact"][key] - metrics["reference"][key]
    report.add("task", f"|Δ{key}|", abs(delta), tol.nme_delta, "<=",
               f"{metrics['reference'][key]:.4f} → {metrics['artifact'][key]:.4f}")


def _task_parsing(report, cfg, samples, ref_preds, cand_preds, tol: Tolerance) -> None:
    from farl_edge.metrics import ConfusionHistogram

    same = total = 0
    hists = {"reference": ConfusionHistogram(len(cfg.labels)), "artifact": ConfusionHistogram(len(cfg.labels))}
    annotated = all(s.mask_path is not None or getattr(s, "mask_parts", None) for s in samples)
    for s, r, c in zip(samples, ref_preds, cand_preds):
        same += int((r.label_map == c.label_map).sum())
        total += r.label_map.size
        if annotated:
            gt = s.load_mask()
            hists["reference"].update(r.label_map, gt)
            hists["artifact"].update(c.label_map, gt)
    report.add("task", "pixel agreement (%)", 100.0 * same / total, tol.pixel_agreement, ">=")
    if not annotated:
        return
    metrics = {k: {m: v for m, v in h.summary(cfg.labels).items() if m in ("f1_mean", "miou", "pixel_acc", "n")}
               for k, h in hists.items()}
    report.metrics = metrics
    delta = metrics["artifact"]["f1_mean"] - metrics["reference"]["f1_mean"]
    report.add("task", "|Δf1_mean|", abs(delta), tol.f1_delta, "<=",
               f"{metrics['reference']['f1_mean']:.3f} → {metrics['artifact']['f1_mean']:.3f}")


def check_io(what: str, expected: dict[str, list], actual: dict[str, list]) -> dict:
    """Names, then shapes, of a built artifact's inputs/outputs (symbolic and -1 dims both read 'dynamic').

    For builders whose artifact cannot run here: the structural half of the validator. Raises
    :class:`ParityError` (names/shapes table) on a mismatch; returns ``{name: shape}`` checked.
    """
    report = ParityReport()
    report.add("names", "inputs/outputs", sorted(actual), sorted(expected), "==")
    if report.passed:
        for name, want in expected.items():
            got = [d if isinstance(d, int) and d >= 0 else "dynamic" for d in actual[name]]
            want = [d if isinstance(d, int) else "dynamic" for d in want]
            report.add("shapes", name, got, want, "==")
    if not report.passed:
        raise ParityError(report, what=what)
    return {name: list(actual[name]) for name in expected}


def validate_artifact(path, model=None, *, eval_data=None, eval_size: int = 32, tolerance: str | None = None,
                      tolerance_overrides: dict | None = None, raise_on_fail: bool = True) -> ParityReport:
    """Re-run the parity validation of an existing artifact folder against its PyTorch model.

    ``model``: the PyTorch FaRLModel; default: rebuilt from the manifest (shipped weights or the
    recorded checkpoint; a random-init export cannot be rebuilt and needs ``model``).
    """
    from farl_edge.export.calibration import evaluation_set
    from farl_edge.export.config import export_config
    from farl_edge.models.predictor import TorchPredictor
    from farl_edge.registry import ModelConfig
    from farl_edge.runtime import load, read_manifest

    manifest = read_manifest(path)
    cfg = ModelConfig.from_dict(manifest["model"])
    if model is None:
        from farl_edge.export.pipeline import resolve_model

        weights = manifest.get("weights", {})
        if weights.get("source") not in ("shipped", "checkpoint"):
            raise ValueError(f"{path}: exported from {weights.get('source', 'unknown')} weights; pass model=")
        model, _ = resolve_model(cfg.name, checkpoint=weights.get("path"), input_size=cfg.input_size,
                                  protocol=cfg.preprocess.protocol)
    with warnings.catch_warnings():  # the "unvalidated" warning: this is the validation
        warnings.simplefilter("ignore")
        session = load(path, allow_failed=True)
    ecfg = export_config(cfg, batch=session.batch)
    tol_name = tolerance or manifest.get("validation", {}).get("tolerance_set") or manifest["precision"]
    faces = evaluation_set(cfg, eval_data, eval_size)
    return compare(TorchPredictor(model), session, faces.samples, ecfg.tolerance(tol_name, tolerance_overrides),
                   ecfg.output_names, raise_on_fail=raise_on_fail)

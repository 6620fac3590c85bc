"""Declarative export configuration per task (Optimum style): I/O names, dynamic axes, opset,
and the parity tolerances the validator enforces, per precision.

Tolerances are data: recipes and ``export(..., tolerance={...})`` override single fields.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from farl_edge.registry import ModelConfig

INPUT_NAME = "image"
OUTPUT_NAMES = {"backbone": ("embedding",), "parsing": ("logits",), "alignment": ("landmarks", "heatmaps")}
# The exporter chosen by measurement (farl-small-300w, torch 2.13): dynamo gave 321 nodes and
# max |Δ| 2e-7 on heatmaps; TorchScript gave 2799 nodes (shape arithmetic everywhere) and max |Δ| 3e-3
# on heatmaps / 0.04 px on landmarks (its resize and pooling sizes are traced differently).
DEFAULT_EXPORTER = "dynamo"
DEFAULT_OPSET = 18
# Static INT8 op types, chosen by measurement (see onnxruntime_quant): quantising every op type
# (Add, Mul, Softmax, LayerNorm ...) broke accuracy; GEMM-like ops only keep it.
INT8_OP_TYPES = ("MatMul", "Conv", "ConvTranspose")


@dataclass(frozen=True)
class Tolerance:
    """Limits for one precision. Values: per output, per face (worst face counts).

    cosine: minimum cosine similarity between artifact and PyTorch outputs.
    max_abs: maximum |artifact - PyTorch|, relative to max |PyTorch| of that output.
    landmark_disagreement: mean distance between artifact and PyTorch landmarks, in % of the
        ground truth's inter-ocular distance (box size for AFLW-19), maximum.
    nme_delta: maximum |Δ NME_io| (percentage points) on the evaluation subset.
    pixel_agreement: minimum % of pixels where artifact and PyTorch label maps agree.
    f1_delta: maximum |Δ F1 mean| (percentage points).
    """

    cosine: float
    max_abs: float
    landmark_disagreement: float
    nme_delta: float
    pixel_agreement: float
    f1_delta: float

    def replace(self, **changes) -> "Tolerance":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown tolerance fields {sorted(unknown)}; known: "
                             f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **{k: float(v) for k, v in changes.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# "bf16" is the tolerance for an fp32 artifact that the runtime runs in bfloat16 (OpenVINO's
# default on AMX CPUs, the intel-cpu-bf16 recipe).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(cosine=0.99999, max_abs=1e-3, landmark_disagreement=0.05, nme_delta=0.005,
                      pixel_agreement=99.9, f1_delta=0.05),
    "fp16": Tolerance(cosine=0.9999, max_abs=1e-2, landmark_disagreement=0.2, nme_delta=0.02,
                      pixel_agreement=99.5, f1_delta=0.1),
    "bf16": Tolerance(cosine=0.999, max_abs=5e-2, landmark_disagreement=1.0, nme_delta=0.05,
                      pixel_agreement=98.5, f1_delta=0.3),
    "int8": Tolerance(cosine=0.999, max_abs=0.25, landmark_disagreement=2.0, nme_delta=0.1,
                      pixel_agreement=97.0, f1_delta=0.5),
}


@dataclass(frozen=True)
class ExportConfig:
    """What every exporter of one model must produce, and how closely."""

    task: str
    input_size: int  # side of the image the graph takes (the crop: 512 under FaRL's protocol)
    num_outputs: int
    out_stride: int = 4  # output maps are network_size / out_stride (UPerHead 4, edge heads 8)
    network_size: int | None = None  # side the network runs at (the graph resizes to it); None: input_size
    batch: int | None = 1  # None = dynamic batch axis
    opset: int = DEFAULT_OPSET
    exporter: str = DEFAULT_EXPORTER
    input_names: tuple[str, ...] = (INPUT_NAME,)
    output_names: tuple[str, ...] = ()
    int8_op_types: tuple[str, ...] = INT8_OP_TYPES
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    @property
    def batch_dim(self) -> int | str:
        return "batch" if self.batch is None else self.batch

    def input_shape(self) -> list:
        return [self.batch_dim, 3, self.input_size, self.input_size]

    def output_shapes(self, embed_dim: int | None = None) -> dict[str, list]:
        b, s, n = self.batch_dim, (self.network_size or self.input_size) // self.out_stride, self.num_outputs
        shapes = {
            "logits": [b, n, s, s], "landmarks": [b, n, 2], "heatmaps": [b, n, s, s],
            "embedding": [b, embed_dim],
        }
        return {name: shapes[name] for name in self.output_names}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        if self.batch is not None:
            return {}
        return {name: {0: "batch"} for name in (*self.input_names, *self.output_names)}

    def tolerance(self, precision: str, overrides: dict | None = None) -> Tolerance:
        if precision not in self.tolerances:
            raise ValueError(f"no tolerances for precision {precision!r}; known: {', '.join(self.tolerances)}")
        tol = self.tolerances[precision]
        return tol.replace(**overrides) if overrides else tol


def example_input(export_cfg: ExportConfig, target: str):
    """A seeded (B, 3, S, S) example at the artifact's fixed batch, for exporters that trace one
    (``target`` names the format in the error when the batch is dynamic)."""
    import torch

    if export_cfg.batch is None:
        raise ValueError(f"{target} artifacts have a fixed batch: pass --batch N (default 1)")
    s = export_cfg.input_size
    return (torch.rand(export_cfg.batch, 3, s, s, generator=torch.Generator().manual_seed(0)),)


def export_config(cfg: ModelConfig, batch: int | None = 1, **changes) -> ExportConfig:
    """The export configuration of a registry model (``batch=None``: dynamic batch)."""
    if batch is not None and int(batch) < 1:
        raise ValueError(f"batch must be >= 1 or 'dynamic', not {batch}")
    return ExportConfig(task=cfg.task, input_size=cfg.crop_size, network_size=cfg.input_size, num_outputs=cfg.num_outputs,
                        out_stride=int((cfg.head or {}).get("out_stride", 4)),
                        batch=None if batch is None else int(batch), output_names=OUTPUT_NAMES[cfg.task],
                        **changes)

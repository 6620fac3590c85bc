"""PyTorch model as an evaluation predictor (numpy in, numpy out)."""
from __future__ import annotations

import numpy as np
import torch

from farl_edge.models.task_model import FaRLModel


class TorchPredictor:
    def __init__(self, model: FaRLModel, dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.dtype = dtype  # torch.bfloat16 → CPU autocast

    @property
    def config(self):
        return self.model.cfg  # read through: a protocol switch on the model shows here

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.autocast("cpu", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            out = self.model(x)
        out = out if isinstance(out, tuple) else (out,)
        return {name: t.float().numpy() for name, t in zip(self.model.output_names, out)}

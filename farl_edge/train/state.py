"""Resumable training state: model, optimiser, scheduler, step, RNG — written atomically."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from farl_edge.fileio import atomic_write_with


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write_with(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict:
    """RNG states as tensors and plain lists, so the file loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": list(internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_train_state(path: Path, *, model, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    atomic_torch_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "rng": rng_state(), "extra": extra or {},
    }, path)


def load_train_state(path: Path, *, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore everything saved by ``save_train_state``; returns (step, extra)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"]), state.get("extra", {})

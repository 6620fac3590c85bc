"""Model registry: one JSON config per named model in ``farl_edge/configs/models``.

Torch-free, so the runtime and the CLI's listing commands stay light.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

TASKS = ("backbone", "parsing", "alignment")


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


@dataclass(frozen=True)
class ModelConfig:
    name: str
    task: str
    vision: dict
    input_size: int
    taps: list
    mean: list
    std: list
    description: str = ""
    head: dict | None = None
    labels: list | None = None
    num_landmarks: int | None = None
    dataset: str | None = None
    preprocess: dict = field(default_factory=dict)
    text: dict | None = None
    weights: str | None = None
    base: str | None = None  # for distilled/edge variants: the model they were derived from

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model config {data.get('name')!r} has unknown fields {sorted(unknown)}")
        cfg = cls(**data)
        if cfg.task not in TASKS:
            raise ValueError(f"model config {cfg.name!r}: task must be one of {TASKS}, not {cfg.task!r}")
        if cfg.task == "parsing" and not cfg.labels:
            raise ValueError(f"parsing model {cfg.name!r} needs 'labels'")
        if cfg.task == "alignment" and not cfg.num_landmarks:
            raise ValueError(f"alignment model {cfg.name!r} needs 'num_landmarks'")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if getattr(self, k) is not None}

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.task == "parsing" else int(self.num_landmarks or 0)


def _config_dir() -> Path:
    return Path(str(resources.files("farl_edge") / "configs" / "models"))


@lru_cache(maxsize=None)
def _all_configs() -> dict[str, ModelConfig]:
    configs = {}
    for path in sorted(_config_dir().glob("*.json")):
        cfg = ModelConfig.from_dict(json.loads(path.read_text()))
        if cfg.name != path.stem:
            raise ValueError(f"{path}: name {cfg.name!r} does not match the file name")
        configs[cfg.name] = cfg
    return configs


def list_models(task: str | None = None) -> list[str]:
    return [n for n, c in _all_configs().items() if task is None or c.task == task]


def get_config(name: str) -> ModelConfig:
    configs = _all_configs()
    if name not in configs:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(configs)} (see `farl-edge models`)")
    return configs[name]


def weights_path(cfg: ModelConfig) -> Path | None:
    """Shipped weights file of a registry model, if the package carries one."""
    if not cfg.weights:
        return None
    path = Path(str(resources.files("farl_edge") / "data" / "weights" / cfg.weights))
    return path if path.exists() else None

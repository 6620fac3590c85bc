"""Model registry: one JSON config per named model in ``farl_edge/configs/models``.

A config's nested sections are typed (:class:`VisionCfg`, :class:`HeadCfg`, :class:`PreprocessCfg`,
:class:`TextCfg`, in the manner of open_clip's ``CLIPVisionCfg``): each default lives once, on the
section, and an unknown key is an error instead of a silent fall-back to a default. A registry
file whose ``base`` names another model holds only what it changes from that model (see
:func:`resolve_base`).

Torch-free, so the runtime and the CLI's listing commands stay light.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

TASKS = ("backbone", "parsing", "alignment")
WARPS = ("box", "similarity", "tanh", "full", "ffhq")
PROTOCOLS = ("direct", "farl")
HEAD_TYPES = ("uper", "edge")


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


# --------------------------------------------------------------------------- typed sections
_REQUIRED = object()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS = {
    "int": (_is_int, "an integer"),
    "int | None": (lambda v: v is None or _is_int(v), "an integer or null"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[int, ...]": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v), "a list of integers"),
}


class ConfigSection(dict):
    """One nested section of a model config: typed attributes, one default each, unknown keys rejected.

    Subclasses declare their keys as annotated class attributes; one without a value is required::

        class PreprocessCfg(ConfigSection):
            warp: str = "box"

    The section *is* the dict of the keys its config spells out, so ``ModelConfig.to_dict()``, model
    cards and artifact manifests hold exactly what they held before typing (defaults are not written
    out), and dict-style reads keep working (``section["width"]``, ``section.get("out_stride")``:
    both return the typed default for a known key the config leaves out). Attributes are the typed
    way in: ``cfg.preprocess.warp_factor``. Sections are read-only; equality compares the values in
    effect (defaults filled in), so ``{"warp": "tanh"}`` equals ``{"warp": "tanh", "warp_factor": 0.8}``.
    """

    _fields: ClassVar[dict[str, Any]] = {}   # key → default (or _REQUIRED), in declaration order
    _types: ClassVar[dict[str, str]] = {}
    _what: ClassVar[str] = "config section"
    discriminator: ClassVar[str | None] = None  # the key that picks the section's kind (see resolve_base)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields, types = {}, {}
        for name, annotation in inspect.get_annotations(cls).items():  # this class's own, as strings
            if annotation.startswith("ClassVar"):
                continue
            fields[name] = cls.__dict__.get(name, _REQUIRED)
            types[name] = annotation
            setattr(cls, name, property(lambda self, _n=name: self[_n], doc=f"{name}: {annotation}"))
        cls._fields, cls._types = fields, types

    def __init__(self, data: Mapping | None = None, /, **kwargs):
        data = {**dict(data or ()), **kwargs}
        unknown = [k for k in data if k not in self._fields]
        if unknown:
            raise ValueError(f"{self._what}: unknown keys {sorted(unknown)}; known: {', '.join(self._fields)}")
        missing = [k for k, d in self._fields.items() if d is _REQUIRED and k not in data]
        if missing:
            raise ValueError(f"{self._what}: missing {', '.join(missing)}")
        for key, value in data.items():
            ok, what = _CHECKS[self._types[key]]
            if not ok(value):
                raise ValueError(f"{self._what}: {key} must be {what}, not {value!r}")
        # In declaration order, as the registry files write them.
        super().__init__({k: data[k] for k in self._fields if k in data})
        self._validate()

    def _validate(self) -> None:
        pass

    @classmethod
    def coerce(cls, value):
        """A section from a section, a mapping or None (None stays None)."""
        if value is None or type(value) is cls:
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{cls._what} must be a JSON object, not {type(value).__name__}")
        return cls(value)

    # dict-style reads resolve typed defaults
    def __getitem__(self, key):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        default = self._fields.get(key, _REQUIRED)
        if default is _REQUIRED:
            raise KeyError(key)
        return default

    def get(self, key, default=None):
        """The config's value, else the typed default, else ``default`` (for keys whose typed default
        is None: the consumer decides, e.g. an edge head's channels)."""
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        typed = self._fields.get(key, _REQUIRED)
        return default if typed is _REQUIRED or typed is None else typed

    def resolved(self) -> dict[str, Any]:
        """Every key with the value in effect (defaults filled in; lists as tuples)."""
        return {k: (tuple(v) if isinstance(v, list) else v) for k in self._fields for v in [self[k]]}

    def to_dict(self) -> dict[str, Any]:
        """The keys the config spells out, as a plain dict."""
        return dict(self.items())

    def __eq__(self, other):
        if isinstance(other, ConfigSection):
            return type(other) is type(self) and self.resolved() == other.resolved()
        if isinstance(other, Mapping):
            try:
                return self.resolved() == type(self)(other).resolved()
            except ValueError:
                return False
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    def __reduce__(self):
        return type(self), (dict(self),)

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is read-only; build a new one (dataclasses.replace on the ModelConfig)")

    __setitem__ = __delitem__ = __ior__ = _read_only
    update = pop = popitem = setdefault = clear = _read_only


class VisionCfg(ConfigSection):
    """The ViT image tower."""
    _what = "vision"
    width: int
    layers: int
    heads: int
    patch_size: int
    pretrain_image_size: int = 224
    output_dim: int | None = None  # projection after the class token; None: no projection

    def _validate(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"vision: width {self.width} is not a multiple of heads {self.heads}")


class HeadCfg(ConfigSection):
    """The task head: ``uper`` (FaRL's UPerHead, maps at 1/4) or ``edge`` (light all-MLP head)."""
    _what = "head"
    discriminator = "type"
    type: str = "uper"
    channels: int | None = None  # decoder channels; required for uper, edge heads default to theirs
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)  # uper only
    dropout: float = 0.1
    out_stride: int = 4  # output maps are input_size / out_stride (uper: 4; edge: 4, 8 or 16)

    def _validate(self) -> None:
        if self.type not in HEAD_TYPES:
            raise ValueError(f"head: unknown head type {self.type!r}; known: {', '.join(HEAD_TYPES)}")
        if self.type == "uper" and self.channels is None:
            raise ValueError("head: a uper head needs 'channels'")
        if self.type == "uper" and self.out_stride != 4:
            raise ValueError(f"head: a uper head's maps are at 1/4 of the input, not 1/{self.out_stride}")
        if self.type == "edge" and self.out_stride not in (4, 8, 16):
            raise ValueError(f"head: edge head out_stride must be 4, 8 or 16, not {self.out_stride}")


class PreprocessCfg(ConfigSection):
    """How a face becomes the model input (see :mod:`farl_edge.crops`).

    ``warp``: ``box`` (square crop of a face box, enlarged by ``box_scale``), ``similarity``
    (5-point alignment to FaRL's template), ``tanh`` (the same plus FaRL's tanh-warp of strength
    ``warp_factor``), ``ffhq`` (the FFHQ / CelebA-HQ square from 5 points, as facer aligns
    CelebAMask-HQ faces; images of an already aligned data set are taken whole) or ``full`` (the
    whole image resized). The C++ and Swift runtimes read these
    keys from the artifact manifest.

    ``protocol``: ``direct`` warps the face straight to the network's ``input_size`` (uint8, the
    fast edge path). ``farl`` is FaRL's own evaluation protocol: the face is warped in float (pixels
    scaled to [0, 1] first) to a ``crop_size`` crop, the model resizes it bilinearly to
    ``input_size`` inside its graph, and results go back through the ``crop_size`` frame (parsing
    scores upsampled to it before the inverse warp). See :attr:`ModelConfig.crop_size`.
    """
    _what = "preprocess"
    discriminator = "warp"
    warp: str = "box"
    box_scale: float = 1.0    # read by the box warp
    warp_factor: float = 0.8  # read by the tanh warp
    protocol: str = "direct"
    crop_size: int = 512      # read by the farl protocol

    def _validate(self) -> None:
        if self.warp not in WARPS:
            raise ValueError(f"preprocess: warp must be one of {', '.join(WARPS)}, not {self.warp!r}")
        if self.box_scale <= 0 or self.warp_factor <= 0:
            raise ValueError("preprocess: box_scale and warp_factor must be positive")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"preprocess: protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if int(self.crop_size) != self.crop_size or self.crop_size < 16:
            raise ValueError(f"preprocess: crop_size must be an integer of at least 16, not {self.crop_size!r}")

    @property
    def farl(self) -> bool:
        """FaRL's protocol: pixels scaled to [0, 1] before warping (the direct path warps uint8) and
        the tanh warp on FaRL's pixel-index grid (:func:`farl_edge.geometry.tanh_warp_points`)."""
        return self.protocol == "farl"


class TextCfg(ConfigSection):
    """The CLIP text tower (backbone configs used for pre-training)."""
    _what = "text"
    width: int
    layers: int
    heads: int
    context_length: int
    vocab_size: int


SECTIONS: dict[str, type[ConfigSection]] = {"vision": VisionCfg, "head": HeadCfg, "preprocess": PreprocessCfg,
                                            "text": TextCfg}


# --------------------------------------------------------------------------- model config
@dataclass(frozen=True)
class ModelConfig:
    name: str
    task: str
    vision: VisionCfg
    input_size: int
    taps: list
    mean: list
    std: list
    description: str = ""
    head: HeadCfg | None = None
    labels: list | None = None
    num_landmarks: int | None = None
    dataset: str | None = None
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    text: TextCfg | None = None
    weights: str | None = None
    base: str | None = None  # for distilled/edge variants: the model they were derived from

    def __post_init__(self):
        # Plain dicts (from JSON, cards, manifests, dataclasses.replace) become typed sections.
        for key, section in SECTIONS.items():
            try:
                value = section.coerce(getattr(self, key))
            except ValueError as exc:
                raise ValueError(f"model config {self.name!r}: {exc}") from None
            object.__setattr__(self, key, value)
        if self.preprocess is None:
            object.__setattr__(self, "preprocess", PreprocessCfg())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model config {data.get('name')!r} has unknown fields {sorted(unknown)}")
        missing = [k for k, f in cls.__dataclass_fields__.items()
                   if k not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"model config {data.get('name')!r} lacks {', '.join(missing)}")
        cfg = cls(**data)
        if cfg.task not in TASKS:
            raise ValueError(f"model config {cfg.name!r}: task must be one of {TASKS}, not {cfg.task!r}")
        if cfg.task == "parsing" and not cfg.labels:
            raise ValueError(f"parsing model {cfg.name!r} needs 'labels'")
        if cfg.task == "alignment" and not cfg.num_landmarks:
            raise ValueError(f"alignment model {cfg.name!r} needs 'num_landmarks'")
        if cfg.task != "backbone" and cfg.head is None:
            raise ValueError(f"{cfg.task} model {cfg.name!r} needs 'head'")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; nested sections hold the keys the config spells out (no defaults)."""
        out = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if v is not None:
                out[k] = v.to_dict() if isinstance(v, ConfigSection) else v
        return out

    @property
    def crop_size(self) -> int:
        """Side of the face crop, which is also the side of the image the model (and every exported
        graph) takes: ``preprocess.crop_size`` under the ``farl`` protocol (the graph resizes it to
        ``input_size``), else ``input_size``."""
        return int(self.preprocess.crop_size) if self.preprocess.protocol == "farl" else int(self.input_size)

    def with_protocol(self, protocol: str, crop_size: int | None = None, **changes) -> "ModelConfig":
        """This config with ``preprocess.protocol`` (``farl`` or ``direct``) and, when given,
        ``preprocess.crop_size`` set; ``changes``: other fields, as ``dataclasses.replace``."""
        pre = {**self.preprocess.to_dict(), "protocol": protocol, **({"crop_size": crop_size} if crop_size else {})}
        return dataclasses.replace(self, preprocess=pre, **changes)

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.task == "parsing" else int(self.num_landmarks or 0)


# --------------------------------------------------------------------------- registry files
# What a variant never takes from its base: its identity and its own weights.
NOT_INHERITED = ("name", "description", "weights", "base")


def resolve_base(data: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A variant's registry entry on top of its (resolved) base entry.

    Top-level keys replace the base's, except :data:`NOT_INHERITED`. A nested section merges key by
    key (``"head": {"channels": 36}`` changes only the channels) unless the variant changes the
    section's kind (head ``type``, preprocess ``warp``): then it is the variant's alone, so keys of
    the other kind are not carried over.
    """
    out = {k: v for k, v in base.items() if k not in NOT_INHERITED}
    for key, value in data.items():
        section = SECTIONS.get(key)
        if section is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            d = section.discriminator
            if d is None or d not in value or value[d] == out[key].get(d, section._fields[d]):
                value = {**out[key], **value}
        out[key] = value
    return out


def _config_dir() -> Path:
    return Path(str(resources.files("farl_edge") / "configs" / "models"))


def _resolved_entries(raw: dict[str, dict]) -> dict[str, dict]:
    done: dict[str, dict] = {}

    def resolve(name: str, chain: tuple = ()) -> dict:
        if name in done:
            return done[name]
        if name in chain:
            raise ValueError(f"model configs derive from each other in a loop ({' → '.join((*chain, name))})")
        data = raw[name]
        base = data.get("base")
        if base is not None:
            if base not in raw:
                raise ValueError(f"model config {name!r}: base {base!r} is not a registry model")
            data = resolve_base(data, resolve(base, (*chain, name)))
        done[name] = data
        return data

    for name in raw:
        resolve(name)
    return done


@lru_cache(maxsize=None)
def _all_configs() -> dict[str, ModelConfig]:
    raw = {}
    for path in sorted(_config_dir().glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("name") != path.stem:
            raise ValueError(f"{path}: name {data.get('name')!r} does not match the file name")
        raw[path.stem] = data
    return {name: ModelConfig.from_dict(data) for name, data in _resolved_entries(raw).items()}


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

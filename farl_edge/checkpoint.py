"""Safe checkpoint loading and saving.

Formats read (detected from the file's bytes, not its name):

- official FaRL pre-training ``.pth``: ``{"state_dict": {...}}`` with CLIP names, ``visual.*`` image
  tower, text tower at top level, MIM branch under ``visual.``;
- FaRL trainer files: ``{"networks": {"main_ema": state}}`` with FaRL module names;
- facer TorchScript ``.pt`` (executes code from the file: only with ``trust_torchscript=True``);
- our ``.safetensors`` with a JSON model card in its metadata (``save_checkpoint`` writes these).

Pickle-based files are always read with ``weights_only=True``. Every problem with a file surfaces as
``CheckpointError`` naming the file; loading is strict, with explicit tables of what may be ignored.
"""
from __future__ import annotations

import json
import logging
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from farl_edge.errors import FarlEdgeError
from farl_edge.fileio import atomic_write, atomic_write_with
from farl_edge.models.vit import VisionTransformer, resize_pos_embed
from farl_edge.registry import ModelConfig

log = logging.getLogger(__name__)

FORMAT_NAME = "farl-edge"
FORMAT_VERSION = 1
CARD_METADATA_KEY = "farl_edge_card"
TRUST_FLAG = "--trust-torchscript"


class CheckpointError(FarlEdgeError, ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


@dataclass
class LoadResult:
    path: Path
    format: str  # "official", "farl-trainer", "torchscript", "farl-edge", "state-dict"
    ignored: list[str] = field(default_factory=list)
    resized_pos_embed: tuple[int, int] | None = None  # (rows in file, rows in model)
    card: dict | None = None


# --------------------------------------------------------------------------- ignore tables
# (regex, why). Anything not matched here must load strictly.

_CLIP_METADATA = (r"^(input_resolution|context_length|vocab_size)$", "CLIP metadata scalars, not weights")
_MIM = (r"^visual\.(mask_token$|lm_transformer\.|ln_lm\.|lm_head\.)", "masked-image-modelling branch, pre-training only")

# Official pre-training file → image tower only.
OFFICIAL_IGNORED_FOR_IMAGE_TOWER: tuple[tuple[str, str], ...] = (
    (r"^(token_embedding|transformer|ln_final)\.", "CLIP text tower, not part of the image tower"),
    (r"^(positional_embedding|text_projection)$", "CLIP text tower, not part of the image tower"),
    (r"^logit_scale$", "image-text contrastive temperature, pre-training only"),
    _CLIP_METADATA,
    _MIM,
)

# Official pre-training file → FaRLClip, built without / with the MIM branch.
OFFICIAL_IGNORED_FOR_CLIP: tuple[tuple[str, str], ...] = (_CLIP_METADATA, _MIM)
OFFICIAL_IGNORED_FOR_CLIP_WITH_MIM: tuple[tuple[str, str], ...] = (_CLIP_METADATA,)

# FaRL trainer / facer TorchScript task networks.
TRAINER_IGNORED: tuple[tuple[str, str], ...] = (
    (r"^(backbone|image_encoder)\.image_(mean|std)$", "FaRL's fixed CLIP normalisation buffers; ours come from the config"),
)

# --------------------------------------------------------------------------- FaRL → our names
# timm checkpoint_filter_fn style: first matching (regex, replacement) wins. FaRL's task networks
# are ``backbone`` = FaRLVisualFeatures (``visual`` = CLIP tower, ``fpns`` = adapter) and
# ``head`` / ``heatmap_head`` = MMSEG_UPerHead wrapping mmseg's UPerHead as ``.head``.
_ENC = r"(?:backbone|image_encoder|encoder)"
_HEAD = r"(?:head|heatmap_head|decode_head|image_decoder)(?:\.head)?"
_TOWER = r"(conv1\.weight|class_embedding|positional_embedding|ln_pre\..+|transformer\..+|ln_post\..+|proj)"
_BN_OR_CONV = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

FARL_KEY_RULES: tuple[tuple[str, str], ...] = (
    # CLIP image tower
    (rf"^{_ENC}\.(?:visual\.)?{_TOWER}$", r"backbone.\1"),
    (rf"^visual\.{_TOWER}$", r"backbone.\1"),
    # multi-scale adapter: FaRL's ModuleList ``fpns`` or named fpn1/fpn2 (fpn3/fpn4 hold no weights)
    (rf"^{_ENC}\.fpns\.0\.(\d+)\.{_BN_OR_CONV}$", r"head.adapter.fpn1.\1.\2"),
    (rf"^{_ENC}\.fpns\.1\.(weight|bias)$", r"head.adapter.fpn2.\1"),
    (rf"^(?:{_ENC}\.|{_HEAD}\.)?fpn1\.(\d+)\.{_BN_OR_CONV}$", r"head.adapter.fpn1.\1.\2"),
    (rf"^(?:{_ENC}\.|{_HEAD}\.)?fpn2\.(weight|bias)$", r"head.adapter.fpn2.\1"),
    # mmseg UPerHead; ConvModule ``.conv``/``.bn`` → our ConvBNReLU indices 0/1
    (rf"^{_HEAD}\.psp_modules\.(\d+)\.1\.conv\.(.+)$", r"head.decoder.psp.stages.\1.0.\2"),
    (rf"^{_HEAD}\.psp_modules\.(\d+)\.1\.bn\.(.+)$", r"head.decoder.psp.stages.\1.1.\2"),
    (rf"^{_HEAD}\.(bottleneck|fpn_bottleneck)\.conv\.(.+)$", r"head.decoder.\1.0.\2"),
    (rf"^{_HEAD}\.(bottleneck|fpn_bottleneck)\.bn\.(.+)$", r"head.decoder.\1.1.\2"),
    (rf"^{_HEAD}\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(.+)$", r"head.decoder.\1.\2.0.\3"),
    (rf"^{_HEAD}\.(lateral_convs|fpn_convs)\.(\d+)\.bn\.(.+)$", r"head.decoder.\1.\2.1.\3"),
    (rf"^{_HEAD}\.conv_seg\.(weight|bias)$", r"head.conv_seg.\1"),
)
_COMPILED_RULES = [(re.compile(p), r) for p, r in FARL_KEY_RULES]


# --------------------------------------------------------------------------- small helpers
def _keys(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''}: {shown}{more}"


def _reason(table: tuple[tuple[str, str], ...], key: str) -> str | None:
    return next((why for pattern, why in table if re.search(pattern, key)), None)


def _short(exc: BaseException, limit: int = 160) -> str:
    """First line of an exception, trimmed: enough to diagnose, no traceback in the message."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _strip_prefix(state: dict, prefix: str = "module.") -> dict:
    """DistributedDataParallel wraps names in ``module.``; drop it when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _image_tower(model: nn.Module) -> VisionTransformer:
    if isinstance(model, VisionTransformer):
        return model
    tower = getattr(model, "backbone", None)
    if not isinstance(tower, VisionTransformer):
        raise TypeError(f"{type(model).__name__} has no CLIP image tower (expected a FaRLModel or VisionTransformer)")
    return tower


def _is_clip(model: nn.Module) -> bool:
    from farl_edge.models.clip import FaRLClip

    return isinstance(model, FaRLClip)


# --------------------------------------------------------------------------- reading files
def sniff_format(path: str | Path) -> str:
    """'torch', 'torchscript' or 'safetensors'; CheckpointError if the file is none of these."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torchscript" if _is_torchscript_zip(path) else "torch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 2**32:
        return _check_safetensors_size(path, head, size)
    if head[:1] == b"\x80":  # pickle protocol marker: legacy (pre-zip) torch.save
        return "torch"
    raise CheckpointError(
        f"{path}: not a checkpoint (unrecognised format; expected a PyTorch .pth/.pt, TorchScript .pt or .safetensors file)"
    )


def _is_torchscript_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: zip archive is truncated or corrupt ({_short(exc)})") from exc
    # torch.jit.save writes Python source under code/ and a constants.pkl; torch.save writes neither.
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def _check_safetensors_size(path: Path, head: bytes, size: int) -> str:
    (header_len,) = struct.unpack("<Q", head[:8])
    if 8 + header_len > size:
        raise CheckpointError(f"{path}: safetensors file is truncated (header says {header_len} bytes, file has {size})")
    return "safetensors"


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: holds pickled objects other than tensors and plain containers{what}, which are refused"
                f" for safety because unpickling them can run code (weights_only=True)"
            ) from exc
        raise CheckpointError(f"{path}: cannot unpickle the checkpoint, it may be truncated or corrupt ({_short(exc)})") from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for damaged files
        raise CheckpointError(f"{path}: cannot read the checkpoint, it may be truncated or corrupt ({_short(exc)})") from exc


def _torchscript_state(path: Path, trust: bool) -> dict:
    if not trust:
        raise CheckpointError(
            f"{path}: is a TorchScript file, and loading TorchScript executes code stored in the file;"
            f" if you trust its source, opt in with {TRUST_FLAG} (trust_torchscript=True)"
        )
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript; the user opted in explicitly
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load the TorchScript file ({_short(exc)})") from exc
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _read_safetensors(path: Path, with_tensors: bool = True) -> tuple[dict, dict]:
    """(tensors, metadata); tensors stay empty when only the metadata is wanted."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except Exception as exc:  # SafetensorError, OSError, ...
        raise CheckpointError(f"{path}: cannot read the safetensors file, it may be truncated or corrupt "
                              f"({_short(exc)})") from exc
    return tensors, metadata


def _classify(obj, path: Path) -> tuple[str, dict]:
    """(format, state dict) of an object read with torch.load."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict")
    if isinstance(obj.get("state_dict"), dict):
        state = _strip_prefix(obj["state_dict"])
        return ("official" if any(k.startswith("visual.") for k in state) else "state-dict"), state
    if isinstance(obj.get("networks"), dict):
        return "farl-trainer", _strip_prefix(_trainer_network(obj["networks"], path))
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = _strip_prefix(obj)
        return ("official" if any(k.startswith("visual.") for k in state) else "state-dict"), state
    raise CheckpointError(f"{path}: not a recognised checkpoint layout (top-level {_keys(map(str, obj))})")


def _trainer_network(networks: dict, path: Path) -> dict:
    # FaRL evaluates the EMA weights; "main" is the raw network, used only if no EMA was kept.
    for name in ("main_ema", "main"):
        if isinstance(networks.get(name), dict):
            return networks[name]
    raise CheckpointError(f"{path}: FaRL trainer file without a 'main_ema' network (has {_keys(map(str, networks))})")


def _check_tensors(state: dict, path: Path) -> None:
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict has non-tensor values for {_keys(bad)}")


# --------------------------------------------------------------------------- strict loading
def _fit_pos_embed(state: dict, key: str, tower: VisionTransformer) -> tuple[int, int] | None:
    """Resize the file's position table to the tower's grid (bicubic, class row kept)."""
    table = state.get(key)
    target = tower.positional_embedding
    if not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[1] != target.shape[1]:
        return None  # absent or wrong width: the strict load reports it
    if table.shape[0] == target.shape[0]:
        return None
    try:
        state[key] = resize_pos_embed(table, tower.grid_size)
    except ValueError:
        return None  # not a square grid: the strict load reports the shape
    return int(table.shape[0]), int(target.shape[0])


def _load_strict(module: nn.Module, state: dict, path: Path, what: str) -> None:
    _check_tensors(state, path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {_keys(unexpected)}")
    if wrong:
        problems.append(f"wrong shape (file vs model) for {_keys(wrong)}")
    if problems:
        raise CheckpointError(f"{path}: does not fit the {what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _split_ignored(state: dict, table: tuple[tuple[str, str], ...]) -> tuple[dict, list[str]]:
    kept, ignored = {}, []
    for k, v in state.items():
        if _reason(table, k):
            ignored.append(k)
        else:
            kept[k] = v
    return kept, ignored


def map_farl_keys(state: dict, target_keys: Iterable[str], path: str | Path = "<state dict>") -> tuple[dict, list[str]]:
    """FaRL trainer/facer names → ours with ``FARL_KEY_RULES``; returns (mapped state, ignored keys).

    Keys already named as in the target pass through. Unmapped keys or two keys landing on one
    name raise CheckpointError.
    """
    target = set(target_keys)
    state, ignored = _split_ignored(state, TRAINER_IGNORED)
    mapped, sources, unmapped = {}, {}, []
    for key, value in state.items():
        new = key if key in target else _apply_rules(key)
        if new is None:
            unmapped.append(key)
        elif new in mapped:
            raise CheckpointError(f"{path}: keys {sources[new]!r} and {key!r} both map to {new!r}")
        else:
            mapped[new], sources[new] = value, key
    if unmapped:
        raise CheckpointError(f"{path}: no mapping to this model's names for {_keys(unmapped)}")
    return mapped, ignored


def _apply_rules(key: str) -> str | None:
    for pattern, replacement in _COMPILED_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def load_official_image_tower(tower: VisionTransformer, state: dict, path: str | Path = "<state dict>") -> LoadResult:
    """Official pre-training state dict → CLIP image tower: ``visual.*`` strictly, text/MIM keys ignored."""
    path = Path(path)
    kept, ignored = _split_ignored(state, OFFICIAL_IGNORED_FOR_IMAGE_TOWER)
    outside = [k for k in kept if not k.startswith("visual.")]
    if outside:
        raise CheckpointError(f"{path}: unexpected keys outside the image tower and the known text/MIM keys: {_keys(outside)}")
    visual = {k[len("visual."):]: v for k, v in kept.items()}
    resized = _fit_pos_embed(visual, "positional_embedding", tower)
    _load_strict(tower, visual, path, "image tower")
    return LoadResult(path, "official", ignored, resized)


def _load_task_state(model: nn.Module, state: dict, path: Path, fmt: str) -> LoadResult:
    mapped, ignored = map_farl_keys(state, model.state_dict().keys(), path)
    resized = _fit_pos_embed(mapped, "backbone.positional_embedding", _image_tower(model))
    _load_strict(model, mapped, path, _describe(model))
    return LoadResult(path, fmt, ignored, resized)


def _describe(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    return f"model {cfg.name!r} ({cfg.task})" if isinstance(cfg, ModelConfig) else type(model).__name__


# --------------------------------------------------------------------------- public loading API
def load_weights_into(model: nn.Module, path: str | Path, trust_torchscript: bool = False) -> LoadResult:
    """Load any supported checkpoint file into a FaRLModel (or FaRLClip), strictly.

    An official pre-training file fills only the image tower (a task head keeps its initialisation,
    as for fine-tuning). Position tables are resized to the model's input size when they differ.
    """
    path = Path(path)
    if _is_clip(model):
        return load_clip_weights(model, path)
    kind = sniff_format(path)
    if kind == "safetensors":
        result = _load_farl_edge(model, path)
    elif kind == "torchscript":
        result = _load_task_state(model, _torchscript_state(path, trust_torchscript), path, "torchscript")
    else:
        fmt, state = _classify(_torch_load(path), path)
        if fmt == "official":
            result = load_official_image_tower(_image_tower(model), state, path)
        else:
            result = _load_task_state(model, state, path, fmt)
    head_kept = result.format == "official" and getattr(model, "head", None) is not None
    log.info("%s: loaded %s weights into %s (%d keys ignored%s)", path, result.format, _describe(model),
             len(result.ignored), "; the task head keeps its initialisation" if head_kept else "")
    return result


def _load_farl_edge(model: nn.Module, path: Path) -> LoadResult:
    tensors, metadata = _read_safetensors(path)
    card = _card_from_metadata(metadata, path)
    if any(k.startswith("visual.") for k in tensors):
        # Our pre-trained image-text model (e.g. farl-small-224) is in the official FaRL layout: it
        # fills the image tower exactly as an official .pth does (strict, same ignore table).
        result = load_official_image_tower(_image_tower(model), _strip_prefix(tensors), path)
        result.card = card
        return result
    cfg = getattr(model, "cfg", None)
    if card is not None and isinstance(cfg, ModelConfig):
        check_card_matches(card, cfg, path)
    result = _load_task_state(model, tensors, path, "farl-edge")
    result.card = card
    return result


def load_clip_weights(model: nn.Module, path: str | Path) -> LoadResult:
    """Official FaRL pre-training file (or our safetensors of a FaRLClip) → FaRLClip, strictly."""
    path = Path(path)
    kind = sniff_format(path)
    if kind == "torchscript":
        raise CheckpointError(f"{path}: is a TorchScript task model; FaRLClip loads the official pre-training .pth")
    if kind == "safetensors":
        state, metadata = _read_safetensors(path)
        result = load_clip_state(model, state, path)
        result.format, result.card = "farl-edge", _card_from_metadata(metadata, path)
        return result
    fmt, state = _classify(_torch_load(path), path)
    result = load_clip_state(model, state, path)
    result.format = fmt
    return result


def mim_branch_shape(path: str | Path) -> tuple[int, int] | None:
    """(lm_transformer depth, lm_head vocabulary) of a pre-training file's MIM branch, or None."""
    path = Path(path)
    kind = sniff_format(path)
    if kind == "torchscript":
        return None
    if kind == "safetensors":
        state, _ = _read_safetensors(path)
    else:
        state = _classify(_torch_load(path), path)[1]
    state = _strip_prefix(state)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^visual\.lm_transformer\.resblocks\.(\d+)\.", k))}
    head = state.get("visual.lm_head.weight")
    if not blocks or head is None:
        return None
    if blocks != set(range(len(blocks))):
        raise CheckpointError(f"{path}: MIM branch blocks are not numbered 0..{len(blocks) - 1}: {sorted(blocks)}")
    return len(blocks), int(head.shape[0])


def load_clip_state(model: nn.Module, state: dict, path: str | Path = "<state dict>") -> LoadResult:
    """Official-layout state dict → FaRLClip. MIM keys are ignored unless the model has MIM, then they must fit."""
    path = Path(path)
    has_mim = hasattr(model.visual, "mask_token")
    table = OFFICIAL_IGNORED_FOR_CLIP_WITH_MIM if has_mim else OFFICIAL_IGNORED_FOR_CLIP
    state, ignored = _split_ignored(_strip_prefix(state), table)
    resized = _fit_pos_embed(state, "visual.positional_embedding", model.visual)
    _load_strict(model, state, path, "FaRL image-text model" + (" with MIM" if has_mim else ""))
    return LoadResult(path, "official", ignored, resized)


# --------------------------------------------------------------------------- model cards
_REQUIRED_CARD_FIELDS = ("model", "task", "input_size", "mean", "std")


def card_from_config(cfg: ModelConfig, **extra) -> dict:
    """Model card for ``cfg``: registry name, architecture, task outputs, preprocessing."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "weights", "description")}
    card = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": cfg.name, **fields}
    card["num_outputs"] = cfg.num_outputs
    card.update(extra)
    return card


def config_from_card(card: dict) -> ModelConfig:
    """Rebuild a ModelConfig from a card (for weights of models not in the registry)."""
    known = set(ModelConfig.__dataclass_fields__)
    data = {k: v for k, v in card.items() if k in known}
    data["name"] = card["model"]
    return ModelConfig.from_dict(data)


def _validate_card(card: dict) -> None:
    missing = [k for k in _REQUIRED_CARD_FIELDS if k not in card]
    if card.get("task") == "parsing" and not card.get("labels"):
        missing.append("labels")
    if card.get("task") == "alignment" and not card.get("num_landmarks"):
        missing.append("num_landmarks")
    if missing:
        raise CheckpointError(f"model card lacks {', '.join(missing)}")


def _card_from_metadata(metadata: dict, path: Path) -> dict | None:
    text = metadata.get(CARD_METADATA_KEY)
    if text is None:
        return None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: model card in the metadata is not valid JSON ({_short(exc)})") from exc
    if int(card.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: card format version {card['format_version']} is newer than this farl-edge reads ({FORMAT_VERSION})"
        )
    return card


def read_card(path: str | Path) -> dict:
    """The model card of one of our safetensors files (embedded, else the ``<file>.json`` beside it)."""
    path = Path(path)
    if sniff_format(path) != "safetensors":
        raise CheckpointError(f"{path}: not a safetensors file, so it carries no farl-edge model card")
    _, metadata = _read_safetensors(path, with_tensors=False)
    card = _card_from_metadata(metadata, path)
    if card is None:
        card = _read_sidecar(path)
    if card is None:
        raise CheckpointError(f"{path}: has no farl-edge model card (metadata key {CARD_METADATA_KEY!r} or {path.name}.json)")
    return card


def _read_sidecar(path: Path) -> dict | None:
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{side}: model card is not readable JSON ({_short(exc)})") from exc


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def _architecture(card: dict) -> dict:
    """What decides whether weights fit: task, tower shape, head, number of outputs."""
    vision = card.get("vision") or {}
    arch = {"task": card.get("task")}
    arch.update({f"vision.{k}": vision.get(k) for k in ("width", "layers", "heads", "patch_size", "output_dim")})
    head = {k: v for k, v in (card.get("head") or {}).items() if k != "dropout"}  # dropout holds no weights
    arch.update({f"head.{k}": v for k, v in sorted(head.items())})
    if card.get("task") == "parsing":
        arch["num_outputs"] = len(card.get("labels") or [])
    elif card.get("task") == "alignment":
        arch["num_outputs"] = card.get("num_landmarks")
    return arch


def check_card_matches(card: dict, cfg: ModelConfig, path: str | Path = "<card>") -> None:
    """CheckpointError when the card's architecture is not ``cfg``'s (input size may differ)."""
    have, want = _architecture(card), _architecture(card_from_config(cfg))
    diffs = [f"{k} {have.get(k)!r} vs {want.get(k)!r}" for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    if diffs:
        raise CheckpointError(
            f"{path}: checkpoint is for {card.get('model')!r}, a different architecture from model {cfg.name!r}"
            f" (file vs model: {'; '.join(diffs)})"
        )


# --------------------------------------------------------------------------- saving
def _tensors_for_saving(model: nn.Module, dtype: torch.dtype | None) -> dict:
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.clone().contiguous()  # safetensors refuses tensors that share storage
    return out


def _complete_card(model: nn.Module, card: dict | None, dtype: torch.dtype | None) -> dict:
    cfg = getattr(model, "cfg", None)
    full = card_from_config(cfg) if isinstance(cfg, ModelConfig) else {}
    full.update(card or {})
    full.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, dtype=str(dtype or torch.float32).replace("torch.", ""))
    _validate_card(full)
    return full


def save_checkpoint(model: nn.Module, path: str | Path, card: dict | None = None, dtype: torch.dtype | None = None,
                    sidecar: bool = True) -> dict:
    """Save ``model`` as safetensors with its model card; returns the card written.

    The card starts from ``model.cfg`` (when the model has one) and is updated with ``card``.
    ``dtype=torch.float16`` halves the file for shipping (loading casts back to the model's dtype).
    """
    from safetensors.torch import save_file

    path = Path(path)
    full = _complete_card(model, card, dtype)
    text = json.dumps(full, default=str)
    tensors = _tensors_for_saving(model, dtype)
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata={CARD_METADATA_KEY: text, "format": "pt"}))
    if sidecar:
        pretty = json.dumps(full, indent=2, default=str) + "\n"
        atomic_write(sidecar_path(path), pretty)
    return full

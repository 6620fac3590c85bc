"""FaRL pre-training: image-text contrastive loss + masked image modelling, one process per rank.

FaRL never released its pre-training code; this is this project's implementation of what the
paper describes. Run it with torchrun (``train/pretrain.py``). Per step and rank:

1. a batch of LAION-FACE image-caption pairs from resampled webdataset shards (``webdata.py``);
2. contrastive loss on the CLS features, texts and images gathered from all ranks with gradient
   (``contrastive.py``), learnable temperature ``logit_scale`` clamped at ln(100);
3. MIM on the same encoder (``mim.py``): mask_token at masked patches, same ViT blocks, then
   ``lm_transformer`` → ``ln_lm`` → ``lm_head`` predicting visual tokens (FaRL) or normalised pixels
   (stand-in);
4. loss = ``contrastive_weight`` · contrastive + ``mim.weight`` · MIM; AdamW, warm-up + cosine
   schedule (``contrastive_weight`` 0: MIM only).

Outputs in ``output``: ``last.pt`` (resume state: model, optimiser, scheduler, step, RNG, data
stream positions of every rank), ``checkpoints/step-XXXXXXXX.pth`` in the official FaRL layout
(``{"state_dict": FaRLClip(mim=True).state_dict()}``, read by ``farl_edge.checkpoint.load_clip_weights``),
``train_log.csv`` and ``ranks/rankN.json`` (final parameter checksum per rank). All writes are atomic.
Re-running with the same output folder resumes from ``last.pt``; the continuation is identical to an
uninterrupted run when world size, workers and config are unchanged.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from farl_edge.errors import UserError
from farl_edge.train import mim as mim_lib
from farl_edge.train.contrastive import clamp_logit_scale_, contrastive_loss
from farl_edge.train.distributed import barrier, cleanup, init_distributed
from farl_edge.train.schedule import warmup_cosine
from farl_edge.train.state import atomic_torch_save, load_train_state, save_train_state
from farl_edge.train.webdata import LaionFaceShards, StreamTracker, make_loader, stable_seed

DEFAULTS = {
    "model": "farl-small-224",   # registry name with a "text" section
    "image_size": None,          # default: the model's input size
    "shards": None,              # brace pattern(s) of webdataset tars, e.g. "laion-face/{00000..09999}.tar"
    "output": None,
    "batch_size": 64,            # per rank
    "total_steps": 10000,        # length of the schedule
    "stop_at_step": None,        # stop early (checkpoint written); resume later with the same config
    "warmup_steps": 500,
    "lr": 5e-4,
    "min_lr_ratio": 0.0,
    "weight_decay": 0.2,
    "betas": [0.9, 0.98],
    "eps": 1e-6,
    "grad_clip": None,
    "bf16": True,
    "grad_checkpointing": False,
    "workers": 4,                # DataLoader workers per rank (one data stream each)
    "threads": None,
    "seed": 0,
    "deterministic": False,      # torch.use_deterministic_algorithms(True)
    "save_every": 1000,
    "keep_checkpoints": 5,       # official-layout files kept in checkpoints/ (None: all)
    "init": None,                # start from an official FaRL .pth (or one of ours)
    "contrastive_weight": 1.0,   # 0: masked image modelling only (the ablation's MIM-only arm; captions unused)
    "trust_torchscript": False,  # allow a TorchScript mim.tokenizer (loading it runs code from the file)
    # require_text False: images without caption join masked image modelling only (mixed batches)
    "data": {"shuffle_buffer": 1000, "crop_scale": [0.9, 1.0], "crop_ratio": [0.75, 1.3333333333333333],
             "require_text": True},
    "mim": {
        "target": "pixels",      # "tokens" (FaRL, needs a tokenizer), "pixels" (stand-in), "none"
        "weight": 1.0,
        "mask_ratio": mim_lib.DEFAULT_MASK_RATIO,
        "mask_mode": "block",    # "block" (BEiT) or "random"
        "min_block_patches": 16,
        "norm_pix": True,
        "tokenizer": None,       # "module:function", or a .onnx / TorchScript file
        "tokenizer_format": None,
        "tokenizer_input": "unit",
        "tokenizer_image_size": None,
        "vocab_size": 8192,
    },
}
_NESTED = ("data", "mim")
CSV_FIELDS = ("step", "lr", "loss", "loss_clip", "loss_mim", "acc_i2t", "acc_t2i", "logit_scale", "bad_samples",
              "samples_per_s", "time_s")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults ← JSON file ← overrides (dotted keys such as ``"mim.target"`` reach nested sections)."""
    cfg = copy.deepcopy(DEFAULTS)
    data = json.loads(Path(path).read_text()) if path else {}
    for key, value in data.items():
        if key.startswith("_"):  # "_comment" fields
            continue
        if key in _NESTED:
            cfg[key].update({k: v for k, v in value.items() if not k.startswith("_")})
        else:
            cfg[key] = value
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, sub = key.partition(".")
        if sub:
            cfg.setdefault(section, {})[sub] = value
        else:
            cfg[key] = value
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown pre-training config keys {sorted(unknown)}")
    for section in _NESTED:
        unknown = set(cfg[section]) - set(DEFAULTS[section])
        if unknown:
            raise UserError(f"unknown keys in config section {section!r}: {sorted(unknown)}")
    for key in ("shards", "output"):
        if not cfg[key]:
            raise UserError(f"pre-training config needs {key!r}")
    if cfg["mim"]["target"] not in mim_lib.TARGETS:
        raise UserError(f"mim.target must be one of {mim_lib.TARGETS}, not {cfg['mim']['target']!r}")
    if cfg["mim"]["target"] == "tokens" and not cfg["mim"]["tokenizer"]:
        raise UserError("mim.target 'tokens' needs mim.tokenizer ('module:function', a .onnx or a TorchScript file)")
    return cfg


def check_shards(shards) -> None:
    """Every local shard named by the brace pattern(s) exists (remote URLs and pipes are not checked)."""
    import webdataset as wds

    patterns = [shards] if isinstance(shards, str) else list(shards)
    urls = [u for pattern in patterns for u in wds.shardlists.expand_urls(str(pattern))]
    if not urls:
        raise UserError(f"--shards {shards!r} names no shard")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(urls)} shard files do not exist, e.g. {missing[0]}; "
                        f"check --shards (brace notation: 'dir/{{000000..000009}}.tar'; "
                        f"make shards with train/make_pretrain_shards.py)")


class PretrainNet(nn.Module):
    """One forward for DDP: clean image features, text features, temperature, MIM predictions."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                has_text: torch.Tensor | None = None):
        clip = self.clip
        x = (images - clip.mean) / clip.std
        img = F.normalize(clip.visual(x), dim=-1)
        if has_text is None or bool(has_text.all()):
            txt = clip.encode_text(tokens)
        else:
            # Encode captioned rows only; with none, one row keeps the text tower in the graph (DDP).
            rows = has_text.nonzero().flatten() if bool(has_text.any()) else torch.zeros(1, dtype=torch.long,
                                                                                         device=tokens.device)
            sub = clip.encode_text(tokens[rows])
            txt = sub.new_zeros(tokens.shape[0], sub.shape[1]).index_copy(0, rows, sub)
        pred = None
        if mask is not None:
            # Same as visual.forward_mim(x, mask)[mask], with lm_head applied to masked tokens only.
            v = clip.visual
            h = v.encode_tokens(x, mask=mask, mask_token=v.mask_token)
            h = v.ln_lm(v.lm_transformer(h))[:, 1:]
            pred = v.lm_head(h[mask])
        return img, txt, clip.logit_scale, pred


def build_model(cfg: dict):
    from farl_edge.models.factory import create_clip_model
    from farl_edge.registry import get_config

    mcfg = get_config(cfg["model"])
    m = cfg["mim"]
    use_mim = m["target"] != "none"
    kwargs = {"image_size": cfg["image_size"] or mcfg.input_size}
    if use_mim:
        kwargs["mim_vocab_size"] = mim_lib.lm_head_size(m, mcfg.vision["patch_size"])
    return create_clip_model(cfg["model"], mim=use_mim, **kwargs)


def load_init(clip, path: str | Path, cfg: dict) -> None:
    """Official FaRL file → our model, strictly; a MIM head of another size (pixels target) starts fresh."""
    from farl_edge.checkpoint import load_clip_weights
    from farl_edge.models.factory import create_clip_model

    if not hasattr(clip.visual, "mask_token"):
        load_clip_weights(clip, path)
        return
    try:
        load_clip_weights(clip, path)
        return
    except ValueError as exc:  # CheckpointError; retry without the MIM branch only if that is what differs
        if "lm_head" not in str(exc):
            raise
    plain = create_clip_model(cfg["model"], mim=False, image_size=clip.visual.image_size)
    load_clip_weights(plain, path)  # strict, MIM keys of the file ignored
    missing, unexpected = clip.load_state_dict(plain.state_dict(), strict=False)
    mim_prefixes = ("visual.mask_token", "visual.lm_transformer.", "visual.ln_lm.", "visual.lm_head.")
    if unexpected or any(not k.startswith(mim_prefixes) for k in missing):
        raise RuntimeError(f"{path}: init left keys unmatched: missing {missing}, unexpected {unexpected}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """CLIP / open_clip: no weight decay on gains, biases, class/mask tokens, logit_scale (ndim < 2)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def official_state(clip, cfg: dict, step: int) -> dict:
    """The official FaRL checkpoint layout, plus a small description of how it was trained."""
    meta = {"step": step, "model": cfg["model"], "image_size": int(clip.visual.image_size),
            "mim_target": cfg["mim"]["target"],
            "mim_vocab_size": int(clip.visual.lm_head.out_features) if hasattr(clip.visual, "lm_head") else 0}
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in clip.state_dict().items()}, "farl_edge": meta}


def param_checksum(model: nn.Module) -> dict:
    h = hashlib.sha256()
    total = 0.0
    for name, p in model.state_dict().items():
        t = p.detach().cpu().float().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
        total += float(t.double().sum())
    return {"sha256": h.hexdigest(), "sum": total}


def _gather_objects(obj, world_size: int) -> list:
    if world_size == 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _reduce_stats(values: list[float], device: torch.device) -> list[float]:
    """Mean over ranks of each value (one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows written after the checkpoint we resume from (a crash between checkpoints)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= step]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(rows)


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _prune(folder: Path, keep: int | None) -> None:
    if not keep:
        return
    files = sorted(folder.glob("step-*.pth"))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


def run(cfg: dict) -> dict:
    check_shards(cfg["shards"])  # before processes, models and readers start
    info = init_distributed()
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg["seed"])
    out = Path(cfg["output"])
    m = cfg["mim"]
    use_mim = m["target"] != "none"

    clip = build_model(cfg).to(info.device)
    if cfg["grad_checkpointing"]:
        clip.visual.transformer.grad_checkpointing = True
        clip.transformer.grad_checkpointing = True
    patch, grid = clip.visual.patch_size, clip.visual.grid_size
    image_size = clip.visual.image_size
    optimizer = torch.optim.AdamW(param_groups(clip, cfg["weight_decay"]), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                  eps=cfg["eps"])
    scheduler = warmup_cosine(optimizer, cfg["warmup_steps"], cfg["total_steps"], cfg["min_lr_ratio"])
    tokenizer = None
    if m["target"] == "tokens":
        tokenizer = mim_lib.TokenTarget(m["tokenizer"], clip.visual.lm_head.out_features, m["tokenizer_input"],
                                        m["tokenizer_image_size"], m["tokenizer_format"], info.device,
                                        trust_torchscript=bool(cfg["trust_torchscript"]))

    # ---- resume (or init)
    streams = max(1, int(cfg["workers"]))
    step, generation, positions, next_stream = 0, 0, None, 0
    resume = out / "last.pt"
    if resume.exists():
        step, extra = load_train_state(resume, model=clip, optimizer=optimizer, scheduler=scheduler)
        data = extra.get("data", {})
        ranks = data.get("ranks") or []
        if data.get("world_size") == info.world_size and data.get("num_streams") == streams and len(ranks) == info.world_size:
            generation = int(data.get("generation", 0))
            positions, next_stream = ranks[info.rank]["positions"], ranks[info.rank]["next_stream"]
        else:
            # Another layout: continue on fresh streams (no repeat of the old ones, not bit-identical).
            generation = step
            if info.is_main:
                print(f"resuming at step {step} with a different world size / worker count: new data streams")
    elif cfg["init"]:
        load_init(clip, cfg["init"], cfg)
    net = PretrainNet(clip)
    ddp = DistributedDataParallel(net, device_ids=[info.device.index] if info.device.type == "cuda" else None) \
        if info.world_size > 1 else net

    dataset = LaionFaceShards(cfg["shards"], image_size, cfg["batch_size"], seed=cfg["seed"], rank=info.rank,
                              num_streams=streams, shuffle_buffer=cfg["data"]["shuffle_buffer"],
                              crop_scale=cfg["data"]["crop_scale"], crop_ratio=cfg["data"]["crop_ratio"],
                              context_length=clip.positional_embedding.shape[0], positions=positions,
                              stream_offset=next_stream, generation=generation,
                              require_text=cfg["data"]["require_text"])
    tracker = StreamTracker(streams, positions, next_stream)
    loader = make_loader(dataset, cfg["workers"], pin_memory=info.device.type == "cuda")

    log_path = out / "train_log.csv"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, step)
    end = min(cfg["total_steps"], cfg["stop_at_step"] or cfg["total_steps"])

    def save() -> None:
        states = _gather_objects(tracker.state(), info.world_size)
        if info.is_main:
            ckpt_dir = out / "checkpoints"
            atomic_torch_save(official_state(clip, cfg, step), ckpt_dir / f"step-{step:08d}.pth")
            data = {"world_size": info.world_size, "num_streams": streams, "generation": generation, "ranks": states}
            save_train_state(resume, model=clip, optimizer=optimizer, scheduler=scheduler, step=step,
                             extra={"data": data, "config": json.dumps(cfg)})
            _prune(ckpt_dir, cfg["keep_checkpoints"])
        barrier()

    from tqdm.auto import tqdm

    bar = tqdm(total=end, initial=step, desc=f"pretrain {cfg['model']}", disable=not info.is_main)
    start_time, last_time = time.time(), time.time()
    history: list[dict] = []
    saved_at = step
    net.train()
    if step < end:
        for batch in loader:
            tracker.update(batch)
            images = batch["image"].to(info.device, non_blocking=True)
            text = batch["text"].to(info.device, non_blocking=True)
            has_text = batch["has_text"].to(info.device)
            if not cfg["contrastive_weight"]:
                has_text = torch.zeros_like(has_text)  # MIM only: the text tower sees one row, the loss is 0
            mask = tokens = None
            if use_mim:
                mask = mim_lib.generate_masks(images.shape[0], grid, m["mask_ratio"], m["mask_mode"],
                                              seed=stable_seed(cfg["seed"], "mask", info.rank, step),
                                              **({"min_block": m["min_block_patches"]} if m["mask_mode"] == "block" else {}))
                mask = mask.to(info.device)
                if tokenizer is not None:
                    tokens = tokenizer(images, grid * grid)
            with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=bool(cfg["bf16"])):
                img_f, txt_f, scale, pred = ddp(images, text, mask, has_text)
            loss_clip, acc = contrastive_loss(img_f, txt_f, scale, has_text=has_text)
            loss_mim = torch.zeros((), device=info.device)
            if use_mim:
                loss_mim = mim_lib.mim_loss(pred, images, mask, m["target"], patch, tokens, m["norm_pix"])
            loss = cfg["contrastive_weight"] * loss_clip + m["weight"] * loss_mim
            if not torch.isfinite(loss):
                raise FloatingPointError(f"rank {info.rank}: loss is {loss.item()} at step {step + 1}"
                                         f" (contrastive {loss_clip.item()}, MIM {loss_mim.item()})")
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(clip.parameters(), cfg["grad_clip"])
            optimizer.step()
            scheduler.step()
            clamp_logit_scale_(clip.logit_scale)
            step += 1

            now = time.time()
            mean = _reduce_stats([loss.item(), loss_clip.item(), loss_mim.item(), acc["acc_i2t"], acc["acc_t2i"],
                                  float(tracker.bad_samples)], info.device)
            row = {"step": step, "lr": lr, "loss": mean[0], "loss_clip": mean[1],
                   "loss_mim": mean[2], "acc_i2t": mean[3], "acc_t2i": mean[4],
                   "logit_scale": float(clip.logit_scale.detach().exp()), "bad_samples": int(round(mean[5] * info.world_size)),
                   "samples_per_s": round(images.shape[0] * info.world_size / max(now - last_time, 1e-9), 2),
                   "time_s": round(now - start_time, 2)}
            last_time = now
            history.append({"step": step, "loss": loss.item()})
            if info.is_main:
                _append_csv(log_path, row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", clip=f"{row['loss_clip']:.4f}", mim=f"{row['loss_mim']:.4f}")
            if step % cfg["save_every"] == 0 or step >= end:
                save()
                saved_at = step
            if step >= end:
                break
    if saved_at != step:
        save()
    bar.close()

    summary = {"rank": info.rank, "world_size": info.world_size, "step": step, "params": param_checksum(clip),
               "bad_samples_this_rank": tracker.bad_samples, "losses": history}
    ranks_dir = out / "ranks"
    ranks_dir.mkdir(parents=True, exist_ok=True)
    (ranks_dir / f"rank{info.rank}.json").write_text(json.dumps(summary, indent=1))
    result = {"steps": step, "final_loss": history[-1]["loss"] if history else None,
              "train_seconds": round(time.time() - start_time, 1),
              "checkpoint": str(out / "checkpoints" / f"step-{step:08d}.pth")}
    if info.is_main:
        (out / "result.json").write_text(json.dumps(result, indent=2))
    barrier()
    cleanup()
    return result

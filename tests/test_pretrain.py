"""Pre-training: masks, MIM targets, contrastive loss, shard pipeline, torchrun runs with exact resume.

The torchrun tests launch 2 CPU processes (gloo) on shards written from real images in
../shared/data; they skip with a message when that folder is absent.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from farl_edge.train import mim
from farl_edge.train.contrastive import MAX_LOGIT_SCALE, clamp_logit_scale_, contrastive_loss
from farl_edge.train.pretrain import PretrainNet, build_model, load_config
from farl_edge.train.webdata import BadSampleCounter, LaionFaceShards, StreamTracker, make_loader

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
IMAGES = SHARED_DATA / "celebamask-hq" / "train" / "images"
CONFIG = ROOT / "train" / "configs" / "pretrain-small.json"
SIZE = 64  # tiny images: 4x4 patches of 16 px


def _make_shards_module():
    spec = importlib.util.spec_from_file_location("make_test_shards", ROOT / "train" / "make_test_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images_dir() -> Path:
    if not IMAGES.is_dir():
        pytest.skip(f"needs real face images at {IMAGES} (../shared/data beside the project root; CI has it)")
    return IMAGES


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """4 shards x 6 samples from real images (placeholder captions), downscaled for speed."""
    out = tmp_path_factory.mktemp("shards")
    paths = _make_shards_module().write_test_shards(_images_dir(), out, num_shards=4, per_shard=6, seed=1, max_side=96)
    assert len(paths) == 4 and all(p.stat().st_size > 0 for p in paths)
    return str(out / "{000000..000003}.tar")


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("mode", ["block", "random"])
@pytest.mark.parametrize("grid", [4, 14])
def test_mask_ratio(mode, grid):
    masks = mim.generate_masks(16, grid, 0.4, mode, seed=3)
    n = grid * grid
    assert masks.shape == (16, n) and masks.dtype == torch.bool
    assert (masks.sum(1) == round(0.4 * n)).all()
    assert torch.equal(masks, mim.generate_masks(16, grid, 0.4, mode, seed=3))  # reproducible
    assert not torch.equal(masks, mim.generate_masks(16, grid, 0.4, mode, seed=4))


def test_block_mask_is_blockwise():
    # BEiT's generator without the top-up masks whole rectangles: many masked patches touch a masked neighbour.
    rng = random.Random(0)
    m = mim.block_mask(14, 0.4, rng, exact=False).reshape(14, 14)
    assert 0 < m.sum() <= round(0.4 * 196)
    neighbours = m[1:, :] & m[:-1, :]
    assert neighbours.sum() > 0.5 * m.sum()
    with pytest.raises(ValueError):
        mim.generate_masks(1, 14, 1.0)


# --------------------------------------------------------------------------- MIM pixel target
def test_pixel_target_shape_and_normalisation():
    images = torch.rand(2, 3, SIZE, SIZE)
    target = mim.pixel_targets(images, 16)
    assert target.shape == (2, (SIZE // 16) ** 2, 16 * 16 * 3)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(target.var(-1), torch.ones(2, 16), atol=1e-3)
    raw = mim.patchify(images, 16)
    # patch 1 = rows 0..15, cols 16..31, pixels in (row, col, channel) order
    assert torch.equal(raw[0, 1], images[0, :, :16, 16:32].permute(1, 2, 0).reshape(-1))


def test_pixel_mim_head_and_predictions():
    cfg = load_config(CONFIG, {"shards": "unused", "output": "unused", "image_size": SIZE})
    clip = build_model(cfg)
    assert clip.visual.lm_head.out_features == 16 * 16 * 3
    net = PretrainNet(clip).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = 49406, 49407
    mask = mim.generate_masks(2, clip.visual.grid_size, 0.4, "block", seed=0)
    with torch.no_grad():
        img, txt, scale, pred = net(images, tokens, mask)
        full = clip.visual.forward_mim((images - clip.mean) / clip.std, mask)
    assert pred.shape == (int(mask.sum()), 768)
    assert torch.allclose(pred, full[mask], atol=1e-5)
    loss = mim.mim_loss(pred, images, mask, "pixels", 16)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert img.shape == txt.shape == (2, clip.visual.proj.shape[1])


def test_token_target_from_callable():
    target = mim.TokenTarget(f"{__name__}:_fake_tokenizer", vocab_size=8192, input="dall_e")
    ids = target(torch.rand(3, 3, SIZE, SIZE), num_patches=16)
    assert ids.shape == (3, 16) and ids.dtype == torch.long and int(ids.max()) < 8192
    logits = torch.randn(5, 8192, requires_grad=True)
    loss = mim.token_loss(logits, ids.flatten()[:5])
    assert torch.isfinite(loss)
    with pytest.raises(ValueError):
        target(torch.rand(1, 3, SIZE, SIZE), num_patches=196)


def _fake_tokenizer(images: torch.Tensor) -> torch.Tensor:
    """Stand-in 'visual tokenizer': logits (B, V, h, w) from 16x16 patch means."""
    pooled = torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True), 16)  # (B, 1, 4, 4)
    codes = (pooled * 8191).round().long().clamp(0, 8191)
    return torch.nn.functional.one_hot(codes[:, 0], 8192).permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------- contrastive loss
def test_contrastive_loss_matches_hand_computation_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    scale = torch.tensor(math.log(2.0))
    loss, stats = contrastive_loss(img, txt, scale, gather=False)
    # logits image→text = 2 * img @ txt.T = [[1.2, 0.0], [1.6, 2.0]]; text→image is its transpose.
    e = math.exp
    i2t = (-math.log(e(1.2) / (e(1.2) + e(0.0))) - math.log(e(2.0) / (e(1.6) + e(2.0)))) / 2
    t2i = (-math.log(e(1.2) / (e(1.2) + e(1.6))) - math.log(e(2.0) / (e(0.0) + e(2.0)))) / 2
    assert loss.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)
    assert stats["acc_i2t"] == 1.0 and stats["acc_t2i"] == 0.5
    # the temperature is clamped at 100
    big, _ = contrastive_loss(img, txt, torch.tensor(math.log(1000.0)), gather=False)
    capped, _ = contrastive_loss(img, txt, torch.tensor(math.log(100.0)), gather=False)
    assert big.item() == pytest.approx(capped.item(), abs=1e-6)
    p = torch.nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale_(p)
    assert p.item() == pytest.approx(MAX_LOGIT_SCALE)


def _gather_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x = torch.randn(2 * world, 6)
        w = torch.nn.Parameter(torch.randn(6, 4))
        scale = torch.nn.Parameter(torch.tensor(1.5))
        local = x[rank * 2:(rank + 1) * 2]
        loss, _ = contrastive_loss(torch.nn.functional.normalize(local @ w, dim=-1),
                                   torch.nn.functional.normalize(local.flip(1) @ w, dim=-1), scale)
        loss.backward()
        grads = torch.cat([w.grad.flatten(), scale.grad.flatten()])
        dist.all_reduce(grads)  # what DDP does, then divides by world size
        summed = loss.detach().clone()
        dist.all_reduce(summed)
        queue.put((rank, (grads / world).tolist(), summed.item()))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_gradient_equals_single_process():
    """2 gloo ranks with gathered features = one process on the global batch (loss and gradients)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    w = torch.nn.Parameter(torch.randn(6, 4))
    scale = torch.nn.Parameter(torch.tensor(1.5))
    loss, _ = contrastive_loss(torch.nn.functional.normalize(x @ w, dim=-1),
                               torch.nn.functional.normalize(x.flip(1) @ w, dim=-1), scale, gather=False)
    loss.backward()
    expected = torch.cat([w.grad.flatten(), scale.grad.flatten()])
    for _rank, grads, summed_loss in results:
        assert torch.allclose(torch.tensor(grads), expected, atol=1e-5)
        assert summed_loss / 2 == pytest.approx(loss.item(), abs=1e-5)


# --------------------------------------------------------------------------- shard pipeline
def _write_shard(path: Path, images_dir: Path, good: int, corrupt_at: set[int], no_caption_at: set[int]) -> None:
    import webdataset as wds

    files = sorted(images_dir.glob("*.jpg"))[: good + len(corrupt_at) + len(no_caption_at)]
    with wds.TarWriter(str(path)) as sink:
        for i, f in enumerate(files):
            sample = {"__key__": f"{i:06d}", "jpg": f.read_bytes(), "txt": "a photo of a face", "json": b"{}"}
            if i in corrupt_at:
                sample["jpg"] = b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(100)
            if i in no_caption_at:
                del sample["txt"]
            sink.write(sample)


def test_corrupt_sample_is_skipped_and_counted(tmp_path, recwarn):
    shard = tmp_path / "000000.tar"
    _write_shard(shard, _images_dir(), good=5, corrupt_at={2}, no_caption_at={4})
    ds = LaionFaceShards([str(shard)], SIZE, batch_size=5, shuffle_buffer=1)
    batch = next(iter(ds))
    assert batch["image"].shape == (5, 3, SIZE, SIZE) and batch["text"].shape == (5, 77)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["bad"] == 2  # one undecodable image, one sample without caption
    assert batch["shard"] == 0 and batch["offset"] == 7  # the whole first shard consumed
    assert any("skipping bad sample" in str(w.message) for w in recwarn)
    counter = BadSampleCounter(log_first=0)
    assert counter(ValueError("x")) is True and counter.count == 1


def test_stream_positions_resume_exactly(shards):
    """Batches after restoring a StreamTracker state equal the uninterrupted stream (2 workers)."""
    kwargs = dict(seed=5, num_streams=2, shuffle_buffer=4)

    def batches(ds, n):
        out = []
        for b in make_loader(ds, workers=2):
            out.append(b)
            if len(out) == n:
                return out

    straight = batches(LaionFaceShards(shards, SIZE, 4, **kwargs), 7)
    tracker = StreamTracker(2)
    for b in straight[:3]:
        tracker.update(b)
    state = tracker.state()
    assert state["next_stream"] == 1 and state["positions"][0]["offset"] % 6 != 0  # resumes mid-shard
    resumed = batches(LaionFaceShards(shards, SIZE, 4, positions=state["positions"],
                                      stream_offset=state["next_stream"], **kwargs), 4)
    for a, b in zip(straight[3:], resumed):
        assert (a["stream"], a["shard"], a["offset"]) == (b["stream"], b["shard"], b["offset"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    # different ranks read different streams
    other = batches(LaionFaceShards(shards, SIZE, 4, rank=1, **kwargs), 1)[0]
    assert not torch.equal(other["image"], straight[0]["image"])


# --------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(shards: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(ROOT / "train" / "pretrain.py"), "--config", str(CONFIG),
           "--shards", shards, "--output", str(output), "--batch-size", "4", "--total-steps", "5", "--workers", "2",
           "--threads", "1", "--seed", "7", "--set", f"image_size={SIZE}", "--set", "warmup_steps=2",
           "--set", "data.shuffle_buffer=4", "--set", "deterministic=true", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _log(output: Path) -> list[dict]:
    with (output / "train_log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def straight_run(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    t = time.time()
    _torchrun(shards, out)
    print(f"torchrun 2x5 steps: {time.time() - t:.1f}s")
    return out


def test_torchrun_two_ranks_finite_and_in_sync(straight_run):
    rows = _log(straight_run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        for key in ("loss", "loss_clip", "loss_mim"):
            assert math.isfinite(float(r[key]))
        assert float(r["loss_mim"]) > 0
    ranks = [json.loads((straight_run / "ranks" / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 5
    assert ranks[0]["params"]["sha256"] == ranks[1]["params"]["sha256"]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # ...while each rank saw its own data
    assert json.loads((straight_run / "result.json").read_text())["steps"] == 5


def test_mim_only_arm_trains_without_the_contrastive_loss(shards, tmp_path):
    """contrastive_weight 0 (the ablation's MIM-only arm): the loss is the MIM loss alone."""
    out = tmp_path / "mim"
    _torchrun(shards, out, "--set", "contrastive_weight=0", "--total-steps", "2")
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["loss_clip"]) == 0.0 and float(r["loss"]) == pytest.approx(float(r["loss_mim"]))


def test_checkpoint_loads_with_official_loader(straight_run):
    from farl_edge.checkpoint import load_clip_weights
    from farl_edge.models.factory import create_clip_model

    path = straight_run / "checkpoints" / "step-00000005.pth"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    keys = set(raw["state_dict"])
    assert {"logit_scale", "visual.conv1.weight", "visual.mask_token", "visual.lm_head.weight", "token_embedding.weight",
            "text_projection"} <= keys
    model = create_clip_model("farl-small-224", mim=True, mim_vocab_size=768, image_size=SIZE)
    result = load_clip_weights(model, path)
    assert result.format == "official"
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["state_dict"][k]), k
    # a checkpoint with MIM keys also loads into the plain image-text model (MIM keys ignored)
    plain = create_clip_model("farl-small-224", mim=False, image_size=SIZE)
    assert any(k.startswith("visual.lm_head") for k in load_clip_weights(plain, path).ignored)


def test_torchrun_resume_matches_uninterrupted_run(shards, straight_run, tmp_path):
    out = tmp_path / "resumed"
    _torchrun(shards, out, "--stop-at-step", "3")
    first = json.loads((out / "ranks" / "rank0.json").read_text())
    assert first["step"] == 3 and [h["step"] for h in first["losses"]] == [1, 2, 3]
    _torchrun(shards, out)
    second = [json.loads((out / "ranks" / f"rank{i}.json").read_text()) for i in range(2)]
    assert [h["step"] for h in second[0]["losses"]] == [4, 5]  # continued at the right step
    assert second[0]["params"]["sha256"] == second[1]["params"]["sha256"]

    # same losses, step by step, and the same final parameters as the uninterrupted run
    ref = [json.loads((straight_run / "ranks" / f"rank{i}.json").read_text()) for i in range(2)]
    for rank in range(2):
        got = [h["loss"] for h in json.loads((out / "ranks" / f"rank{rank}.json").read_text())["losses"]]
        want = [h["loss"] for h in ref[rank]["losses"][3:]]
        assert got == pytest.approx(want, abs=1e-6)
    rows, ref_rows = _log(out), _log(straight_run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    for a, b in zip(rows, ref_rows):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-6)
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-9)
    a = torch.load(out / "checkpoints" / "step-00000005.pth", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(straight_run / "checkpoints" / "step-00000005.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed parameters differ from the uninterrupted run by up to {worst}"


def test_init_from_official_file_with_other_mim_head(tmp_path):
    """--init: an official file with FaRL's 8192-token head initialises a pixel-target model (head fresh)."""
    from farl_edge.train.pretrain import load_init, official_state
    from farl_edge.train.state import atomic_torch_save

    tokens_cfg = load_config(CONFIG, {"shards": "x", "output": "x", "image_size": SIZE, "mim.target": "tokens",
                                      "mim.tokenizer": f"{__name__}:_fake_tokenizer"})
    source = build_model(tokens_cfg)
    assert source.visual.lm_head.out_features == 8192
    atomic_torch_save(official_state(source, tokens_cfg, 0), tmp_path / "farl.pth")
    pixels_cfg = load_config(CONFIG, {"shards": "x", "output": "x", "image_size": SIZE})
    torch.manual_seed(123)
    target = build_model(pixels_cfg)
    load_init(target, tmp_path / "farl.pth", pixels_cfg)
    assert torch.equal(target.visual.conv1.weight, source.visual.conv1.weight)
    assert torch.equal(target.token_embedding.weight, source.token_embedding.weight)
    assert target.visual.lm_head.out_features == 768
    with pytest.raises(ValueError, match="unknown"):
        load_config(CONFIG, {"shards": "x", "output": "x", "mim.typo": 1})

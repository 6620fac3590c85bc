"""Pre-training data from the shared faces: captions from annotations, deterministic shards, mixed batches."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, shared_data
from farl_edge.train import captions
from farl_edge.train.contrastive import contrastive_loss
from farl_edge.train.shards import write_pretrain_shards
from farl_edge.train.webdata import LaionFaceShards


# --------------------------------------------------------------------------- captions from masks
def _face_mask(size: int = 200) -> np.ndarray:
    """Synthetic palette mask: skin square in the middle, short hair band on top."""
    m = np.zeros((size, size), np.uint8)
    m[60:160, 60:140] = captions.SKIN
    m[40:60, 60:140] = captions.HAIR
    return m


def test_mask_caption_plain_face():
    assert captions.caption_from_mask(_face_mask()) == "a photo of a face with short hair."


def test_mask_caption_accessories_and_long_hair():
    m = _face_mask()
    m[95:105, 70:130] = captions.EYEGLASSES
    m[140:150, 90:110] = captions.INNER_MOUTH
    m[100:120, 50:60] = captions.L_EAR
    m[100:120, 140:150] = captions.R_EAR
    m[120:124, 48:52] = captions.EARRING
    m[60:190, 40:50] = captions.HAIR  # hair falls below the chin (row 159)
    m[170:175, 80:120] = captions.NECKLACE
    assert captions.mask_phrases(m) == ["eyeglasses", "earrings", "a necklace", "an open mouth",
                                        "both ears visible", "long hair"]


def test_mask_caption_hat_hides_hair_and_bald():
    m = _face_mask()
    m[m == captions.HAIR] = captions.HAT
    assert captions.mask_phrases(m) == ["a hat"]
    bald = _face_mask()
    bald[bald == captions.HAIR] = 0
    assert captions.mask_phrases(bald) == ["no visible hair"]


def test_mask_caption_ignores_specks():
    m = _face_mask()
    m[100, 100] = captions.EYEGLASSES  # one pixel is below every presence threshold
    assert "eyeglasses" not in captions.mask_phrases(m)


def test_mask_caption_rejects_bad_input():
    with pytest.raises(ValueError, match="index mask"):
        captions.caption_from_mask(np.zeros((4, 4, 3), np.uint8))


# --------------------------------------------------------------------------- captions from landmarks
def _frontal_landmarks() -> np.ndarray:
    """A symmetric 68-point face: jaw 0..16, nose tip 30 centred, eyes level, lips closed."""
    p = np.zeros((68, 2))
    for i in range(17):
        t = math.pi * i / 16
        p[i] = (100 - 60 * math.cos(t), 100 + 60 * math.sin(t) * 0.6)
    p[27:36] = (100, 100)
    p[36:42] = (75, 80)
    p[42:48] = (125, 80)
    p[48], p[54] = (80, 130), (120, 130)
    p[62], p[66] = (100, 128), (100, 130)
    return p


def test_landmark_caption_frontal_closed():
    assert captions.caption_from_landmarks(_frontal_landmarks()) == \
        "a photo of a face with a frontal pose and a closed mouth."


def test_landmark_caption_turned_tilted_open():
    p = _frontal_landmarks()
    p[30] = (70, 100)            # nose tip near the image-left jaw end: turned to the person's right
    p[42:48] = (125, 100)        # right eye 20 px lower than the left: ~39 degrees of roll
    p[66] = (100, 140)           # 12 px lip gap on a 40 px mouth
    assert captions.landmark_phrases(p) == ["the head turned to its right", "a tilted head", "an open mouth"]
    p[30] = (130, 100)
    assert captions.landmark_phrases(p)[0] == "the head turned to its left"


def test_landmark_caption_rejects_bad_input():
    with pytest.raises(ValueError, match="68"):
        captions.caption_from_landmarks(np.zeros((5, 2)))
    bad = _frontal_landmarks()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        captions.caption_from_landmarks(bad)


# --------------------------------------------------------------------------- shards
def _small_sources(tmp_path: Path) -> dict:
    """A few faces of each source, linked into folders (the writer reads whole folders)."""
    lfw, w300, celebm = tmp_path / "lfw", tmp_path / "300w-train", tmp_path / "celebm-train"
    for d in (lfw, w300, celebm / "images", celebm / "masks"):
        d.mkdir(parents=True)
    for p in sorted(shared_data("lfw", "images").glob("*.jpg"))[:5]:
        (lfw / p.name).symlink_to(p)
    for p in sorted(shared_data("300w", "train").glob("*.jpg"))[:4]:
        (w300 / p.name).symlink_to(p)
        (w300 / p.with_suffix(".pts").name).symlink_to(p.with_suffix(".pts"))
    src = shared_data("celebamask-hq", "train")
    for p in sorted((src / "images").glob("*.jpg"))[:3]:
        (celebm / "images" / p.name).symlink_to(p)
        (celebm / "masks" / (p.stem + ".png")).symlink_to(src / "masks" / (p.stem + ".png"))
    return {"lfw": lfw, "ibug300w": w300, "celebm": celebm}


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_counts_captions_and_determinism(tmp_path):
    sources = _small_sources(tmp_path)
    a = write_pretrain_shards(tmp_path / "a", per_shard=5, max_side=64, progress=False, **sources)
    b = write_pretrain_shards(tmp_path / "b", per_shard=5, max_side=64, progress=False, **sources)
    assert a["samples"] == 12 and a["captioned"] == 7
    assert {k: (v["images"], v["captioned"]) for k, v in a["sources"].items()} == \
        {"lfw": (5, 0), "300w": (4, 4), "celebm": (3, 3)}
    assert [s["samples"] for s in a["shards"]] == [5, 5, 2]
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]  # byte-identical
    seen = {"lfw": 0, "300w": 0, "celebm": 0}
    for shard in a["shards"]:
        members = _members(tmp_path / "a" / shard["file"])
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                key = name[:-5]
                has_txt = f"{key}.txt" in members
                assert has_txt == (meta["source"] != "lfw") == meta["caption_generated_from_annotations"]
                if has_txt:
                    assert members[f"{key}.txt"].decode().startswith("a photo of a face")
                seen[meta["source"]] += 1
    assert seen == {"lfw": 5, "300w": 4, "celebm": 3}
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["pattern"] == "{000000..000002}.tar"


def test_shards_refuse_evaluation_folders_and_existing_output(tmp_path):
    with pytest.raises(ValueError, match="evaluation split"):
        write_pretrain_shards(tmp_path / "out", ibug300w=shared_data("300w", "test-helen"), progress=False)
    with pytest.raises(ValueError, match="evaluation split"):
        write_pretrain_shards(tmp_path / "out", celebm=shared_data("celebamask-hq", "val"), progress=False)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_pretrain_shards(keep, lfw=_small_sources(tmp_path)["lfw"], progress=False)
    assert (keep / "precious.txt").read_text() == "x"
    assert not list(tmp_path.glob(".out.partial-*")) and not list(tmp_path.glob(".mine.partial-*"))


def test_shard_command_exit_code(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train" / "make_pretrain_shards.py"), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no source folder" in r.stderr and "Traceback" not in r.stderr


def test_mixed_batches_from_shards(tmp_path):
    sources = _small_sources(tmp_path)
    write_pretrain_shards(tmp_path / "s", per_shard=4, max_side=64, progress=False, **sources)
    ds = LaionFaceShards(str(tmp_path / "s" / "{000000..000002}.tar"), 32, 12, shuffle_buffer=1, require_text=False)
    batch = next(iter(ds.stream_batches(0)))
    assert batch["image"].shape == (12, 3, 32, 32)
    assert batch["has_text"].dtype == torch.bool and 0 < int(batch["has_text"].sum()) < 12
    assert (batch["text"][~batch["has_text"]] == 0).all() and (batch["text"][batch["has_text"]] != 0).any()
    strict = LaionFaceShards(str(tmp_path / "s" / "{000000..000002}.tar"), 32, 4, shuffle_buffer=1)
    batch = next(iter(strict.stream_batches(0)))
    assert bool(batch["has_text"].all()) and batch["bad"] > 0  # LAION mode: a missing caption is a bad sample


# --------------------------------------------------------------------------- loss on mixed batches
def test_contrastive_loss_ignores_images_without_text():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    has = torch.tensor([True, False, True, True, False, True])
    scale = torch.tensor(math.log(10.0))
    loss, stats = contrastive_loss(img, txt, scale, gather=False, has_text=has)
    ref, ref_stats = contrastive_loss(img[has], txt[has], scale, gather=False)
    assert torch.allclose(loss, ref) and stats == ref_stats
    # features of caption-less rows do not change the loss
    img2, txt2 = img.clone(), txt.clone()
    img2[~has] = -img2[~has]
    txt2[~has] = torch.roll(txt2[~has], 1, dims=-1)
    assert torch.allclose(contrastive_loss(img2, txt2, scale, gather=False, has_text=has)[0], ref)


def test_contrastive_loss_without_any_text_is_zero_with_graph():
    img = torch.randn(3, 4, requires_grad=True)
    txt = torch.randn(3, 4, requires_grad=True)
    loss, stats = contrastive_loss(img, txt, torch.tensor(1.0), gather=False, has_text=torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and img.grad is not None and math.isnan(stats["acc_i2t"])


# --------------------------------------------------------------------------- pre-trained file → fine-tuning
def _saved_clip(tmp_path, extra_key: bool = False):
    from farl_edge.checkpoint import card_from_config, save_checkpoint
    from farl_edge.models.factory import create_clip_model
    from farl_edge.registry import get_config

    torch.manual_seed(0)
    clip = create_clip_model("farl-small-224")
    if extra_key:
        clip.register_buffer("visual_extra", torch.zeros(1))
        clip.visual.register_buffer("surprise", torch.zeros(3))
    path = tmp_path / "clip.safetensors"
    save_checkpoint(clip, path, card=card_from_config(get_config("farl-small-224")), dtype=torch.float16)
    return clip, path


def test_finetune_start_loads_our_pretrained_file_like_an_official_one(tmp_path):
    from farl_edge.models import create_model

    clip, path = _saved_clip(tmp_path)
    model = create_model("farl-small-300w", checkpoint=path, pretrained=False)
    ref = {k: v.half().float() for k, v in clip.visual.state_dict().items()}
    got = model.backbone.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_pretrained_file_with_unknown_keys_is_refused(tmp_path):
    from farl_edge.checkpoint import CheckpointError
    from farl_edge.models import create_model

    _, path = _saved_clip(tmp_path, extra_key=True)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        create_model("farl-small-300w", checkpoint=path, pretrained=False)


def test_shipped_farl_small_224_feeds_the_finetune_recipes():
    from farl_edge.models import create_model
    from farl_edge.registry import get_config, weights_path

    path = weights_path(get_config("farl-small-224"))
    assert path is not None, "farl-small-224 is registered with weights but the file is not shipped"
    for name in ("farl-small-300w", "farl-small-celebm"):
        model = create_model(name, checkpoint=path, pretrained=False)
        assert torch.isfinite(next(model.backbone.parameters())).all()

"""farl_edge.datasets: readers on the real shared data and on tiny synthetic fixtures."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from farl_edge.datasets import (CELEBAMASK_TO_FARL, FARL_CELEBM_LABELS, PALETTE_ORDER, DatasetError,
                                FaceSample, detect_format, open_dataset, read_300w, read_aflw19,
                                read_celebamask_hq, read_lapa, read_pts, read_wflw)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write_image(path: Path, h=40, w=50, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    img[:, :, 0] = 10  # blue (OpenCV stores BGR): after load_image, channel 2 of the RGB array
    assert cv2.imwrite(str(path), img)


def _pts_text(points) -> str:
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    return f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n"


# ------------------------------------------------------------------------------ real data
def test_300w_real_counts_and_bounds(w300_train_dir, helen_dir):
    train = read_300w(w300_train_dir)
    helen = read_300w(helen_dir)
    assert len(train) == 2012 and len(helen) == 330
    assert not train.problems and not helen.problems
    assert len({s.name for s in train}) == 2012
    prefixes = {s.name.split("_")[0] for s in train}
    assert prefixes == {"afw", "helen", "lfpw"}
    for s in list(train) + list(helen):
        assert s.landmarks.shape == (68, 2) and s.landmarks.dtype == np.float32
        with Image.open(s.image_path) as im:
            w, h = im.size
        assert s.landmarks.min() >= 0
        assert (s.landmarks[:, 0] < w).all() and (s.landmarks[:, 1] < h).all(), s.image_path
    for s in (train[0], helen[-1]):
        img = s.load_image()
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        # continuous coordinates = 1-based .pts values - 0.5
        np.testing.assert_allclose(s.landmarks, read_pts(s.image_path.with_suffix(".pts")) - 0.5, atol=1e-4)


def test_open_dataset_detects_real_layouts(helen_dir, celebm_val_dir):
    assert detect_format(helen_dir) == "300w"
    assert detect_format(celebm_val_dir) == "celebamask-hq"
    assert detect_format(celebm_val_dir.parent) == "celebamask-hq"
    assert len(open_dataset(celebm_val_dir.parent, split="val")) == 100
    with pytest.raises(DatasetError, match="split"):
        open_dataset(celebm_val_dir.parent)  # train and val: ambiguous


def test_celebamask_palette_real(celebm_val_dir):
    samples = read_celebamask_hq(celebm_val_dir)
    assert len(samples) == 100 and not samples.problems
    lut = np.array([FARL_CELEBM_LABELS.index(CELEBAMASK_TO_FARL[p]) for p in PALETTE_ORDER])
    right_eye, left_eye = FARL_CELEBM_LABELS.index("right_eye"), FARL_CELEBM_LABELS.index("left_eye")
    xs = {right_eye: [], left_eye: []}
    for s in samples[:25]:
        raw = np.array(Image.open(s.mask_path))  # palette indices, tooling order
        mask = s.load_mask()
        assert mask.shape == raw.shape == (512, 512) and mask.dtype == np.uint8
        assert mask.max() <= 18
        np.testing.assert_array_equal(mask, lut[raw])
        # explicit spot checks of the mapping
        assert np.all(mask[raw == 0] == 0)
        assert np.all(mask[raw == 1] == FARL_CELEBM_LABELS.index("face"))  # skin -> face (2)
        assert np.all(mask[raw == 17] == FARL_CELEBM_LABELS.index("neck"))  # neck -> 1
        assert np.all(mask[raw == 18] == FARL_CELEBM_LABELS.index("cloth"))  # cloth -> 3
        assert np.all(mask[raw == 13] == FARL_CELEBM_LABELS.index("hair"))  # hair -> 14
        assert np.all(mask[raw == 3] == FARL_CELEBM_LABELS.index("glasses"))  # eyeglasses -> 15
        assert np.all(mask[raw == 11] == FARL_CELEBM_LABELS.index("upper_lip"))
        assert np.all(mask[raw == 12] == FARL_CELEBM_LABELS.index("lower_lip"))
        for c in xs:
            cols = np.nonzero(mask == c)[1]
            if cols.size:
                xs[c].append(cols.mean())
        # cv2 would turn the palette into colours: the reader must not
        assert cv2.imread(str(s.mask_path)).ndim == 3
    assert samples[0].load_image().shape == (512, 512, 3)
    # FaRL's "right"/"left" are image sides: CelebAMask-HQ l_eye (person's left) -> right_eye
    assert np.mean(xs[right_eye]) > 256 > np.mean(xs[left_eye])


def test_celebm_labels_match_registry():
    from farl_edge.registry import get_config

    assert tuple(get_config("farl-b16-celebm-448").labels) == FARL_CELEBM_LABELS
    assert len(get_config("farl-b16-lapa-448").labels) == 11
    assert set(CELEBAMASK_TO_FARL) == set(PALETTE_ORDER)
    assert sorted(CELEBAMASK_TO_FARL.values()) == sorted(FARL_CELEBM_LABELS)


# ------------------------------------------------------------------------------ 300-W fixtures
def test_300w_nested_and_malformed(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.uniform(5, 35, (68, 2))
    for sub, name in (("helen/testset", "a"), ("ibug", "b"), ("01_Indoor", "c")):
        _write_image(tmp_path / sub / f"{name}.png" if name == "b" else tmp_path / sub / f"{name}.jpg")
        (tmp_path / sub / f"{name}.pts").write_text(_pts_text(good))
    samples = read_300w(tmp_path)
    assert [s.name for s in samples] == ["01_Indoor/c", "helen/testset/a", "ibug/b"]
    np.testing.assert_allclose(samples[0].landmarks, good - 0.5, atol=1e-3)
    rgb = samples[0].load_image()
    assert rgb.shape == (40, 50, 3)  # BGR -> RGB (JPEG: allow a few levels)
    assert abs(int(rgb[0, 0, 2]) - 10) <= 3 and abs(int(rgb[0, 0, 0]) - 128) <= 3

    bad = tmp_path / "broken" / "d.pts"
    _write_image(bad.with_suffix(".jpg"))
    bad.write_text(_pts_text(good[:67]).replace("n_points: 67", "n_points: 68"))
    with pytest.raises(DatasetError) as err:
        read_300w(tmp_path)
    assert str(bad) in str(err.value) and err.value.problems[0][0] == str(bad)
    lenient = read_300w(tmp_path, strict=False)
    assert len(lenient) == 3 and lenient.problems and lenient.problems[0][0] == str(bad)

    # missing image is reported too
    orphan = tmp_path / "orphan.pts"
    orphan.write_text(_pts_text(good))
    problems = dict(read_300w(tmp_path, strict=False).problems)
    assert "no image" in problems[str(orphan)]


@pytest.mark.parametrize("text,needle", [
    ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", "missing '}'"),
    ("version: 1\n{\n1 2\n}\n", "n_points"),
    ("version: 1\nn_points: 1\n{\n1 x\n}\n", "not numeric"),
    ("version: 1\nn_points: 1\n{\n1 2 3\n}\n", "2 values"),
])
def test_read_pts_errors(tmp_path, text, needle):
    p = tmp_path / "x.pts"
    p.write_text(text)
    with pytest.raises(DatasetError, match=needle) as err:
        read_pts(p, n_points=None)
    assert str(p) in str(err.value)


# ------------------------------------------------------------------------------ WFLW
def _wflw_line(rng, rel, attrs=(0, 1, 0, 0, 1, 0)):
    lm = rng.uniform(10, 90, (98, 2))
    box = [5.0, 6.0, 95.0, 96.0]
    vals = [f"{v:.4f}" for v in lm.ravel()] + [f"{v:.1f}" for v in box] + [str(a) for a in attrs] + [rel]
    return " ".join(vals), lm


def test_wflw_fixture(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "WFLW"
    ann = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True)
    _write_image(root / "WFLW_images" / "0--Parade" / "p1.jpg", 100, 100)
    l1, lm1 = _wflw_line(rng, "0--Parade/p1.jpg")
    l2, _ = _wflw_line(rng, "0--Parade/p1.jpg", attrs=(1, 0, 0, 0, 0, 1))
    (ann / "list_98pt_rect_attr_test.txt").write_text(l1 + "\n" + l2 + "\n")
    samples = read_wflw(ann / "list_98pt_rect_attr_test.txt")  # image root found automatically
    assert len(samples) == 2 and samples[0].name != samples[1].name
    np.testing.assert_allclose(samples[0].landmarks, lm1, atol=1e-3)
    np.testing.assert_allclose(samples[0].box, [5, 6, 95, 96])
    assert samples[0].attributes["occlusion"] == 1 and samples[1].attributes["pose"] == 1
    assert detect_format(ann / "list_98pt_rect_attr_test.txt") == "wflw"
    assert detect_format(root) == "wflw"
    assert len(open_dataset(root, split="test")) == 2

    bad_file = ann / "list_98pt_rect_attr_train.txt"
    bad_file.write_text(l1 + "\n" + " ".join(l2.split()[:-2]) + "\n")
    with pytest.raises(DatasetError, match=r"list_98pt_rect_attr_train\.txt:2"):
        read_wflw(bad_file)
    lenient = read_wflw(bad_file, strict=False)
    assert len(lenient) == 1 and lenient.problems[0][0].endswith(":2")


# ------------------------------------------------------------------------------ AFLW-19
def test_aflw19_fixture(tmp_path):
    rng = np.random.default_rng(2)
    _write_image(tmp_path / "flickr" / "0" / "img1.jpg")
    lines = []
    for vis in (None, [1] * 19, [1] * 18 + [0]):
        lm = rng.uniform(5, 35, (19, 2))
        fields = ["flickr/0/img1.jpg"] + [f"{v:.3f}" for v in lm.ravel()] + ["2", "3", "45", "38"]
        if vis is not None:
            fields += [str(v) for v in vis]
        lines.append(" ".join(fields))
    lst = tmp_path / "aflw19_test.txt"
    lst.write_text("# path, 19 x y, box, [visibility]\n" + "\n".join(lines) + "\n")
    full = read_aflw19(lst)
    assert len(full) == 3 and full[0].landmarks.shape == (19, 2)
    np.testing.assert_allclose(full[0].box, [2, 3, 45, 38])
    assert "visibility" not in full[0].attributes and full[1].attributes["visibility"].all()
    assert detect_format(lst) == "aflw19"
    frontal = read_aflw19(lst, subset="frontal", strict=False)
    assert [s.name for s in frontal] == ["flickr/0/img1#3"]
    assert len(frontal.problems) == 1  # the line without flags cannot be classified
    # comma-separated works as well
    csv = tmp_path / "aflw19.csv"
    csv.write_text(lines[0].replace(" ", ",") + "\n")
    assert len(read_aflw19(csv)) == 1
    bad = tmp_path / "bad.txt"
    bad.write_text(lines[0] + " 7\n")
    with pytest.raises(DatasetError, match="bad.txt:1"):
        read_aflw19(bad)


# ------------------------------------------------------------------------------ LaPa
def test_lapa_fixture(tmp_path):
    rng = np.random.default_rng(3)
    split = tmp_path / "LaPa" / "test"
    for name in ("f1", "f2"):
        _write_image(split / "images" / f"{name}.jpg", 32, 32)
        (split / "labels").mkdir(exist_ok=True)
        label = rng.integers(0, 11, (32, 32)).astype(np.uint8)
        Image.fromarray(label, mode="L").save(split / "labels" / f"{name}.png")
        (split / "landmarks").mkdir(exist_ok=True)
        lm = rng.uniform(0, 32, (106, 2))
        (split / "landmarks" / f"{name}.txt").write_text("106\n" + "\n".join(f"{x} {y}" for x, y in lm) + "\n")
    samples = read_lapa(tmp_path / "LaPa", "test")
    assert [s.name for s in samples] == ["f1", "f2"]
    assert samples[0].landmarks.shape == (106, 2)
    np.testing.assert_array_equal(samples[0].load_mask(), np.array(Image.open(split / "labels" / "f1.png")))
    assert detect_format(split) == "lapa" and detect_format(tmp_path / "LaPa") == "lapa"
    assert len(open_dataset(split)) == 2 and len(open_dataset(tmp_path / "LaPa")) == 2  # single split

    # out-of-range label values are refused when loaded, naming the file
    Image.fromarray(np.full((32, 32), 12, np.uint8), mode="L").save(split / "labels" / "f2.png")
    with pytest.raises(DatasetError, match="f2.png"):
        read_lapa(tmp_path / "LaPa", "test")[1].load_mask()
    # a missing landmark file is a problem, not a silent skip
    (split / "landmarks" / "f2.txt").unlink()
    with pytest.raises(DatasetError, match="f2.txt"):
        read_lapa(tmp_path / "LaPa", "test")
    assert len(read_lapa(tmp_path / "LaPa", "test", strict=False)) == 1


# ------------------------------------------------------------------------------ official CelebAMask-HQ
def test_celebamask_official_parts(tmp_path):
    root = tmp_path / "CelebAMask-HQ"
    for idx in (0, 1, 2001):
        _write_image(root / "CelebA-HQ-img" / f"{idx}.jpg", 64, 64)

    def part(idx, name, rows):
        d = root / "CelebAMask-HQ-mask-anno" / str(idx // 2000)
        d.mkdir(parents=True, exist_ok=True)
        m = np.zeros((32, 32), np.uint8)
        m[rows] = 255
        cv2.imwrite(str(d / f"{idx:05d}_{name}.png"), m)

    part(0, "skin", slice(0, 20))
    part(0, "hair", slice(10, 14))   # over skin
    part(0, "neck", slice(18, 24))   # painted before skin in FaRL's order: skin wins on 18-19
    part(0, "l_eye", slice(2, 3))
    part(0, "r_eye", slice(4, 5))
    part(0, "ear_r", slice(30, 31))
    part(1, "cloth", slice(0, 32))
    part(2001, "eye_g", slice(5, 6))
    samples = read_celebamask_hq(root)
    assert [s.name for s in samples] == ["0", "1", "2001"]
    assert detect_format(root) == "celebamask-hq"
    m = samples[0].load_mask()
    assert m.shape == (32, 32)
    idx = FARL_CELEBM_LABELS.index
    assert (m[0] == idx("face")).all() and (m[11] == idx("hair")).all()
    assert (m[19] == idx("face")).all() and (m[22] == idx("neck")).all()
    assert (m[2] == idx("right_eye")).all() and (m[4] == idx("left_eye")).all()
    assert (m[30] == idx("earring")).all() and (m[26] == 0).all()
    assert (samples[1].load_mask() == idx("cloth")).all()
    assert (samples[2].load_mask()[5] == idx("glasses")).all()
    assert samples[0].load_mask(size=(64, 64)).shape == (64, 64)

    # split files select FaRL's partition
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx orig_idx orig_file\n0 10 000011.jpg\n1 20 000021.jpg\n2001 30 000031.jpg\n")
    (root / "list_eval_partition.txt").write_text("000011.jpg 0\n000021.jpg 2\n000031.jpg 2\n")
    assert [s.name for s in read_celebamask_hq(root, split="test")] == ["1", "2001"]

    # unknown part files and images without masks are reported
    _write_image(root / "CelebA-HQ-img" / "5.jpg", 64, 64)
    part(0, "tattoo", slice(0, 1))
    with pytest.raises(DatasetError) as err:
        read_celebamask_hq(root)
    text = str(err.value)
    assert "00000_tattoo.png" in text and "5.jpg" in text


def test_celebamask_index_png_fixture_and_errors(tmp_path):
    folder = tmp_path / "celebm"
    _write_image(folder / "images" / "a.jpg", 16, 16)
    pal = Image.fromarray(np.arange(16 * 16).reshape(16, 16).astype(np.uint8) % 19, mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    (folder / "masks").mkdir()
    pal.save(folder / "masks" / "a.png")
    s = read_celebamask_hq(folder)[0]
    raw = np.arange(16 * 16).reshape(16, 16) % 19
    lut = np.array([FARL_CELEBM_LABELS.index(CELEBAMASK_TO_FARL[p]) for p in PALETTE_ORDER])
    np.testing.assert_array_equal(s.load_mask(), lut[raw])
    # colour masks are refused (would be silently wrong)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "masks" / "a.png")
    with pytest.raises(DatasetError, match="a.png"):
        s.load_mask()
    # an image without a mask is reported
    _write_image(folder / "images" / "b.jpg", 16, 16)
    with pytest.raises(DatasetError, match="b.jpg"):
        read_celebamask_hq(folder)


def test_unreadable_image_and_unknown_layout(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="x.jpg"):
        FaceSample(image_path=p, name="x").load_image()
    with pytest.raises(DatasetError, match="x.jpg"):
        FaceSample(image_path=tmp_path / "missing" / "x.jpg").load_image()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"images/\+masks/.*\.pts"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown format"):
        open_dataset(tmp_path / "empty", format="coco")

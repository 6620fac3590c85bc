"""First contact: a new user's mistakes and faults never lose files, never pass silently, never
print a traceback, and exit non-zero whenever nothing was done (one test per reproduced problem)."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT, shared_data
from export_fixtures import ALIGN, eval_dir, run_export, weight_args
from farl_edge.cli import main

CLI = [sys.executable, "-m", "farl_edge.cli"]


def _cli(*args, env=None, cwd=None, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def _no_traceback(r):
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """farl-small-300w exported to ONNX fp32 once for the run/eval checks."""
    out = tmp_path_factory.mktemp("art") / "align-onnx"
    run_export(ALIGN, "onnx", "fp32", out)
    return out


@pytest.fixture
def helen_image(tmp_path):
    src = sorted(shared_data("300w", "test-helen").glob("*.jpg"))[0]
    dst = tmp_path / "photos" / "a.jpg"
    dst.parent.mkdir()
    dst.write_bytes(src.read_bytes())
    return dst


# ------------------------------------------------------------------ 1. --force replaces only artifacts
def test_force_never_deletes_a_user_folder(tmp_path, capsys):
    user = tmp_path / "u"
    (user / "sub").mkdir(parents=True)
    (user / "precious.txt").write_text("x")
    code = main(["export", "--model", ALIGN, "--target", "onnx", "--output", str(user), "--force", "--quiet",
                 *weight_args(ALIGN)])
    err = capsys.readouterr().err
    assert code == 2 and "not a farl-edge artifact" in err and len(err.strip().splitlines()) == 1
    assert (user / "precious.txt").read_text() == "x" and (user / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]  # no staging or .old leftovers


def test_force_on_the_current_folder_is_refused_cleanly(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    r = _no_traceback(_cli("export", "--model", ALIGN, "--target", "onnx", "--output", ".", "--force", "--quiet",
                           *weight_args(ALIGN), cwd=tmp_path))
    assert r.returncode == 2 and "not a farl-edge artifact" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------ 2. run never writes over inputs
def test_run_output_equal_to_source_is_refused(artifact, helen_image):
    before = helen_image.read_bytes()
    for output in (helen_image, helen_image.parent):
        r = _no_traceback(_cli("run", "--model", artifact, "--source", helen_image.parent if output == helen_image.parent
                               else helen_image, "--output", output))
        assert r.returncode == 2 and "overwrite the input" in r.stderr, r.stderr
    assert helen_image.read_bytes() == before


def test_run_keeps_one_output_per_input_and_existing_files(artifact, helen_image, tmp_path):
    png = helen_image.with_suffix(".png")
    cv2.imwrite(str(png), cv2.imread(str(helen_image)))
    out = tmp_path / "out"
    r = _no_traceback(_cli("run", "--model", artifact, "--source", helen_image.parent, "--output", out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "a.png"]
    r = _no_traceback(_cli("run", "--model", artifact, "--source", helen_image.parent, "--output", out))
    assert r.returncode == 2 and "--force" in r.stderr  # an existing file is not overwritten silently
    assert _cli("run", "--model", artifact, "--source", helen_image.parent, "--output", out, "--force").returncode == 0


# ------------------------------------------------------------------ 3. wrong value ranges are errors
def test_session_rejects_wrong_dtypes_and_ranges(artifact):
    from farl_edge import runtime

    session = runtime.load(artifact)
    s = session.input_size
    good = np.full((1, 3, s, s), 0.5, np.float32)
    assert session(good)["landmarks"].shape == (1, 68, 2)
    cases = {"uint8": (good * 255).astype(np.uint8), "bool": good > 0.5, "int": (good * 255).astype(np.int64),
             "0..255 float": good * 255, "nan": np.where(good > 0, np.nan, good).astype(np.float32),
             "inf": np.full_like(good, np.inf)}
    for name, batch in cases.items():
        with pytest.raises(ValueError, match=r"float32|\[0, 1\]|NaN") as e:
            session(batch)
        assert "0, 1" in str(e.value) or "float32" in str(e.value), name


def test_pipeline_rejects_a_float_frame_in_0_255(artifact):
    from farl_edge.runtime.frames import FrameError
    from farl_edge.runtime.pipeline import FacePipeline

    bgr = cv2.imread(str(sorted(shared_data("300w", "test-helen").glob("*.jpg"))[0]))
    pipe = FacePipeline(artifact)
    assert len(pipe(bgr).faces) >= 1
    assert len(pipe(bgr.astype(np.float32) / 255).faces) >= 1
    with pytest.raises(FrameError, match="divide by 255"):
        pipe(bgr.astype(np.float32))


# ------------------------------------------------------------------ 4. non-zero exit when nothing was done
def test_run_on_unreadable_inputs_exits_1(artifact, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    r = _no_traceback(_cli("run", "--model", artifact, "--source", empty))
    assert r.returncode == 1 and "no input could be processed" in r.stderr
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"not a png")
    (folder / "y.jpg").write_bytes(b"\xff\xd8 broken")
    assert _no_traceback(_cli("run", "--model", artifact, "--source", folder)).returncode == 1


@pytest.mark.parametrize("argv", [
    ["eval", "--model", ALIGN, "--data", ".", "--batch-size", "-8"],
    ["eval", "--model", ALIGN, "--data", ".", "--limit", "0"],
    ["run", "--model", ".", "--source", "x.jpg", "--threads", "-1"],
    ["run", "--model", ".", "--source", "x.jpg", "--min-score", "2"],
    ["run", "--model", ".", "--source", "x.jpg", "--max-faces", "0"],
], ids=["batch-size", "limit", "threads", "min-score", "max-faces"])
def test_numeric_flags_are_checked_at_parse_time(argv):
    r = _no_traceback(_cli(*argv))
    assert r.returncode == 2 and "error: argument" in r.stderr


# ------------------------------------------------------------------ 5. ordinary mistakes: one line, no traceback
def test_run_output_under_a_regular_file(artifact, helen_image, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _no_traceback(_cli("run", "--model", artifact, "--source", helen_image, "--output", blocker / "out.jpg"))
    assert r.returncode == 2 and "is a file" in r.stderr and blocker.read_text() == "x"


def test_eval_json_pointing_at_a_folder_fails_before_the_work(tmp_path):
    t0 = time.time()
    r = _no_traceback(_cli("eval", "--model", ALIGN, "--data", eval_dir(ALIGN), "--json", tmp_path))
    assert r.returncode == 2 and "is a folder" in r.stderr and time.time() - t0 < 60
    assert list(tmp_path.iterdir()) == []


def test_eval_on_a_folder_without_manifest_says_what_it_is(tmp_path):
    r = _no_traceback(_cli("eval", "--model", tmp_path, "--data", eval_dir(ALIGN)))
    assert r.returncode == 2 and "without manifest.json" in r.stderr and "unknown model" not in r.stderr


@pytest.mark.parametrize("command", [
    ["eval", "--model", ALIGN, "--data", "."],
    ["validate", "."],
    ["bench", "--model", ALIGN, "--targets", "onnx", "--export-only"],
], ids=["eval", "validate", "bench"])
def test_runtime_only_install_names_the_extra(tmp_path, command):
    """No torch (the runtime-only install): the command says which extra to install."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    (tmp_path / "manifest.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = _no_traceback(_cli(*command, env=env, cwd=tmp_path))
    assert r.returncode == 2, r.stderr
    assert "farl-edge[" in r.stderr or "not a farl-edge artifact" in r.stderr, r.stderr


def test_pretrain_with_wrong_shards_says_so_once(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train" / "pretrain.py"), "--config",
                        str(ROOT / "train" / "configs" / "pretrain-small.json"), "--shards",
                        str(tmp_path / "{000000..000003}.tar"), "--output", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "shard files do not exist" in r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 6. messages name flags, not keywords
def test_dataset_messages_name_the_cli_flag(tmp_path):
    (tmp_path / "nothing.txt").write_text("x")
    r = _no_traceback(_cli("eval", "--model", ALIGN, "--data", tmp_path))
    assert r.returncode == 2 and "--format" in r.stderr
    bad = tmp_path / "w"
    bad.mkdir()
    (bad / "a.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    cv2.imwrite(str(bad / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    r = _no_traceback(_cli("eval", "--model", ALIGN, "--data", bad, "--format", "300w"))
    assert r.returncode == 2 and "--skip-bad" in r.stderr


def test_failed_artifact_message_names_the_command(tmp_path, artifact):
    import json
    import shutil

    from farl_edge import runtime

    failed = tmp_path / "failed"
    shutil.copytree(artifact, failed)
    m = json.loads((failed / "manifest.json").read_text())
    m["status"] = "failed"
    (failed / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(runtime.ArtifactError, match="farl-edge validate"):
        runtime.load(failed)


# ------------------------------------------------------------------ 7. SIGTERM cleans up like Ctrl-C
def _terminate_when(proc, needle: str, limit: float = 300) -> str:
    seen = []
    t0 = time.time()
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            break
        assert time.time() - t0 < limit
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    return "".join(seen) + rest


def test_sigterm_during_export_leaves_nothing(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    out = tmp_path / "art"
    proc = subprocess.Popen([*CLI, "export", "--model", ALIGN, "--target", "onnx", "--output", str(out),
                             "--eval-data", str(eval_dir(ALIGN)), "--eval-size", "8", *weight_args(ALIGN)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    err = _terminate_when(proc, "[export]")
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # no artifact, no .art.partial
    assert [p.name for p in tmpdir.iterdir() if "farl-export" in p.name] == []


def test_sigterm_during_a_video_run_publishes_no_video(artifact, tmp_path):
    files = sorted(shared_data("300w", "test-helen").glob("*.jpg"))[:4]
    video = tmp_path / "in.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 320))
    for i in range(400):
        w.write(cv2.resize(cv2.imread(str(files[i % 4])), (320, 320)))
    w.release()
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([*CLI, "run", "--model", str(artifact), "--source", str(video), "--output", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    err = _terminate_when(proc, "frame")
    assert proc.returncode == 143, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if "out.mp4" in p.name] == []


def test_stale_partials_of_a_dead_process_are_swept(tmp_path):
    from farl_edge.export.manifest import staging_folder

    dest = tmp_path / "art"
    stale = tmp_path / ".art.partial.p999999999-abc"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x" * 10)
    other = tmp_path / ".other.partial.p999999999-abc"
    other.mkdir()
    with staging_folder(dest) as staging:
        assert staging.exists()
    assert not stale.exists() and other.exists()  # only leftovers of the same output are swept


# ------------------------------------------------------------------ 8. published files follow the umask
def test_published_artifact_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "art"
        run_export(ALIGN, "onnx", "fp32", out, eval_size=4)
        json_out = tmp_path / "m.json"
        assert main(["eval", "--model", str(out), "--data", str(eval_dir(ALIGN)), "--limit", "2",
                     "--json", str(json_out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for p in out.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    assert stat.S_IMODE(json_out.stat().st_mode) == 0o644


# ------------------------------------------------------------------ 10. recipes ship in the wheel
@pytest.mark.slow
def test_recipes_load_from_an_installed_wheel(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("farl_edge-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    code = ("import farl_edge, json; from farl_edge.export.cli import load_recipe; "
            "r = load_recipe('export/onnxruntime-cpu-int8'); print(farl_edge.__file__); print(json.dumps(r))")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(site) in r.stdout.splitlines()[0] and '"target": "onnx"' in r.stdout


def test_data_root_from_the_environment(monkeypatch, tmp_path):
    from farl_edge.export import calibration
    from farl_edge.registry import get_config

    monkeypatch.setenv(calibration.DATA_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="FARL_EDGE_DATA") as e:
        calibration.calibration_set(get_config(ALIGN), None, 4)
    assert str(tmp_path / "300w" / "train") in str(e.value)
    (tmp_path / "300w").symlink_to(shared_data("300w"))
    assert len(calibration.calibration_set(get_config(ALIGN), None, 4)) == 4

"""Shared helpers (farl_edge.fileio, farl_edge.utils, farl_edge.errors) and the CLI's error boundary."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from farl_edge import cli
from farl_edge.errors import FarlEdgeError, UserError
from farl_edge.fileio import atomic_write, atomic_write_with
from farl_edge.runtime.pipeline import STAGES, FrameResult
from farl_edge.utils import IMAGE_SUFFIXES, package_version, quiet, run_fixed_batch


# --------------------------------------------------------------------------- atomic writes
def test_atomic_write_with_leaves_no_temp_file_on_error(tmp_path):
    target = tmp_path / "state.pt"
    atomic_write_with(target, lambda tmp: torch.save({"a": 1}, tmp))

    def fail(tmp):
        torch.save({"a": 2}, tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert torch.load(target)["a"] == 1


def test_atomic_torch_save_uses_the_shared_writer(tmp_path, monkeypatch):
    from farl_edge.train import state

    calls = []
    monkeypatch.setattr(state, "atomic_write_with", lambda path, write: calls.append(path))
    state.atomic_torch_save({"x": 1}, tmp_path / "x.pt")
    assert calls == [tmp_path / "x.pt"]


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- utils
def test_image_suffixes_are_one_list():
    from farl_edge.datasets import base
    from farl_edge.export import calibration
    from farl_edge.runtime import cli as run_cli
    from farl_edge.train import shards

    for module in (base, calibration, run_cli, shards):
        assert module.IMAGE_SUFFIXES is IMAGE_SUFFIXES


def test_package_version():
    assert package_version("numpy") == np.__version__
    assert package_version("no-such-distribution-farl-edge") is None
    assert package_version("no-such-distribution-farl-edge", "?") == "?"


def test_quiet_hides_stdout_warnings_and_restores_the_log_level(capsys):
    import logging
    import warnings

    log = logging.getLogger("farl-edge-test")
    log.setLevel(logging.INFO)
    with quiet("farl-edge-test", stderr=True):
        print("progress bar")
        warnings.warn("chatty", stacklevel=1)
        assert log.level == logging.ERROR
    assert log.level == logging.INFO
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_run_fixed_batch_chunks_pads_and_trims(n):
    seen = []

    def run(x):
        assert x.shape[0] == 4
        seen.append(x.shape[0])
        return {"y": x * 2, "s": x.sum(axis=(1, 2, 3))}

    batch = np.random.default_rng(0).random((n, 3, 2, 2), dtype=np.float32)
    out = run_fixed_batch(run, batch, 4)
    np.testing.assert_allclose(out["y"], batch * 2)
    np.testing.assert_allclose(out["s"], batch.sum(axis=(1, 2, 3)), rtol=1e-6)
    assert len(seen) == -(-n // 4)


def test_no_faces_result():
    r = FrameResult.no_faces("parsing", ["bg"], preprocess_ms=1.5, error="empty frame")
    assert r.faces == [] and r.frame_hw is None and r.empty and r.error == "empty frame"
    assert r.timings == {**{s: 0.0 for s in STAGES}, "preprocess": 1.5, "total": 1.5}
    assert list(r.timings) == [*STAGES, "total"]


# --------------------------------------------------------------------------- error boundary
def _fake_command(monkeypatch, exc):
    def func(args):
        raise exc

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["eval"].set_defaults(func=func)


def test_project_errors_are_one_line(monkeypatch, capsys):
    _fake_command(monkeypatch, UserError("--data x: no such folder"))
    assert cli.main(["eval", "--model", "m", "--data", "d"]) == 2
    err = capsys.readouterr().err
    assert err == "farl-edge eval: error: --data x: no such folder\n"


def test_project_errors_stay_value_errors():
    from farl_edge.checkpoint import CheckpointError
    from farl_edge.datasets.base import DatasetError
    from farl_edge.runtime import ArtifactError
    from farl_edge.runtime.frames import FrameError

    for cls in (UserError, CheckpointError, DatasetError, ArtifactError, FrameError):
        assert issubclass(cls, FarlEdgeError) and issubclass(cls, ValueError)
    assert cli.UserError is UserError


@pytest.mark.parametrize("exc", [ValueError("operands could not be broadcast"), KeyError("logits")])
def test_internal_value_and_key_errors_keep_their_traceback(monkeypatch, exc):
    _fake_command(monkeypatch, exc)
    with pytest.raises(type(exc)):
        cli.main(["eval", "--model", "m", "--data", "d"])


def test_unknown_model_is_one_line(monkeypatch, capsys):
    from farl_edge.registry import get_config

    def func(args):
        get_config("no-such-model")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["eval"].set_defaults(func=func)
    assert cli.main(["eval", "--model", "m", "--data", "d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("farl-edge eval: error: ") and err.count("\n") == 1


# --------------------------------------------------------------------------- TorchScript tokenizer
def test_torchscript_tokenizer_needs_the_trust_flag(tmp_path):
    from farl_edge.train import mim

    class Tok(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=1).flatten(1).long()

    path = tmp_path / "tok.pt"
    torch.jit.script(Tok()).save(str(path))
    with pytest.raises(UserError, match="--trust-torchscript"):
        mim.load_tokenizer_fn(str(path))
    with pytest.raises(UserError, match="--trust-torchscript"):
        mim.TokenTarget(str(path), vocab_size=8)
    fn = mim.load_tokenizer_fn(str(path), trust_torchscript=True)
    assert isinstance(fn, torch.jit.ScriptModule)


# --------------------------------------------------------------------------- portable result paths
def test_results_name_no_folder_of_the_machine():
    from farl_edge.bench.report import portable, portable_text

    text = ("--out /work/main/benchmarks/results/x --cache /root/.cache/farl-edge-bench "
            "| /work/shared/data/300w/test-helen (330 faces) | `/work/main` /x/work/main/y /work/main2/z")
    assert portable_text(text, "/work/main", "/root") == (
        "--out benchmarks/results/x --cache ~/.cache/farl-edge-bench "
        "| ../shared/data/300w/test-helen (330 faces) | `.` /x/work/main/y ../main2/z")
    data = {"command": "bench --out /work/main/r", "rows": [{"artifact": "/root/.cache/a"}], "n": 3}
    assert portable(data, "/work/main", "/root") == {"command": "bench --out r", "rows": [{"artifact": "~/.cache/a"}],
                                                     "n": 3}


def test_committed_results_are_portable():
    from conftest import ROOT

    results = ROOT / "benchmarks" / "results"
    for path in results.rglob("*"):
        if path.suffix in (".json", ".md", ".csv", ".txt"):
            text = path.read_text()
            assert str(ROOT) not in text and "/root/" not in text and "/home/" not in text, path

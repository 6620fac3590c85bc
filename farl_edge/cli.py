"""`farl-edge` command line. Each subcommand imports its heavy dependencies only when it runs."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from farl_edge.errors import FarlEdgeError, UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, systemd, CI time-outs): unwinds like Ctrl-C, so every cleanup runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def unit_float(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


# Which install extra brings a missing module (ModuleNotFoundError → one line saying what to install).
EXTRA_FOR_MODULE = {"torch": "export", "onnx": "export", "onnxscript": "export", "safetensors": "export",
                    "openvino": "export", "nncf": "export", "coremltools": "export", "regex": "export",
                    "ftfy": "export", "webdataset": "train", "matplotlib": "bench", "psutil": "bench"}


def missing_module_message(command: str, exc: ModuleNotFoundError) -> str | None:
    root = (exc.name or "").split(".")[0]
    extra = EXTRA_FOR_MODULE.get(root)
    if extra is None:
        return None
    return (f"`farl-edge {command}` needs {root}, which this install lacks: pip install \"farl-edge[{extra}]\" "
            f"(CPU-only torch: add --extra-index-url https://download.pytorch.org/whl/cpu, see the README)")


def cmd_models(args) -> int:
    from farl_edge.registry import get_config, list_models, weights_path

    rows = []
    for name in list_models(args.task):
        c = get_config(name)
        out = (f"{len(c.labels)} classes" if c.task == "parsing"
               else f"{c.num_landmarks} points" if c.task == "alignment" else "embedding")
        weights = "shipped" if weights_path(c) else "-"
        rows.append((name, c.task, str(c.input_size), out, weights, c.description))
    if args.json:
        print(json.dumps([get_config(r[0]).to_dict() for r in rows], indent=2))
        return 0
    header = ("model", "task", "input", "outputs", "weights", "description")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[5])
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[5])
    return 0


def load_predictor(model: str, checkpoint: str | None = None, trust_torchscript: bool = False, **runtime_kwargs):
    """A registry name / our checkpoint file (PyTorch) or an exported artifact folder (runtime)."""
    path = Path(model)
    if path.is_dir() and (path / "manifest.json").exists():
        from farl_edge.runtime import load

        return load(path, **runtime_kwargs)
    from farl_edge.models import create_model
    from farl_edge.models.predictor import TorchPredictor
    from farl_edge.registry import UnknownModelError

    if path.suffix == ".safetensors" and path.exists():
        from farl_edge.checkpoint import read_card

        card = read_card(path)
        return TorchPredictor(create_model(card["model"], checkpoint=path))
    try:
        return TorchPredictor(create_model(model, checkpoint=checkpoint, trust_torchscript=trust_torchscript))
    except UnknownModelError as e:
        raise UserError(f"{e}; or pass an exported artifact folder / a .safetensors checkpoint") from None


def cmd_eval(args) -> int:
    from farl_edge.datasets import open_dataset
    from farl_edge.evaluate import evaluate
    from farl_edge.fileio import atomic_write_json, check_output_file

    data = Path(args.data)
    if not data.exists():
        raise UserError(f"data folder {data} does not exist")
    if args.json:
        try:
            check_output_file(args.json, "--json", force=args.force)
        except ValueError as e:
            raise UserError(str(e)) from None
    model = Path(args.model)
    if model.is_dir() and not (model / "manifest.json").exists():
        raise UserError(f"--model {model} is a folder without manifest.json: not an exported artifact "
                        f"(export one with `farl-edge export`, or pass a registry name from `farl-edge models`)")
    predictor = load_predictor(args.model, args.checkpoint, args.trust_torchscript)
    if args.protocol:
        if not hasattr(predictor, "model"):
            raise UserError("--protocol applies to PyTorch models; an exported artifact keeps the protocol it was "
                            "exported with (re-export with `farl-edge export --protocol`)")
        predictor.model.cfg = predictor.model.cfg.with_protocol(args.protocol)
    samples = open_dataset(data, args.format, strict=not args.skip_bad)
    metrics = evaluate(predictor, samples, batch_size=args.batch_size, limit=args.limit)
    metrics = {"model": predictor.config.name, "data": str(data), **metrics}
    if args.json:  # before printing: a reader that closes the pipe early must not cost the file
        atomic_write_json(Path(args.json), metrics)
    _print_metrics(metrics)
    if not metrics.get("n"):
        print(f"farl-edge eval: error: no face of {data} could be evaluated", file=sys.stderr)
        return 1
    return 0


def _print_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<16} {v:8.2f}" if isinstance(v, float) else f"  {k:<16} {v}")
        else:
            print(f"{key:<18} {value:8.3f}" if isinstance(value, float) else f"{key:<18} {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farl-edge", description="FaRL face models: train, export, verify, benchmark, run.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--task", choices=["backbone", "parsing", "alignment"])
    p.add_argument("--json", action="store_true", help="print the configs as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="measure a model (PyTorch or exported) on an annotated data set")
    p.add_argument("--model", required=True, help="registry name, .safetensors checkpoint, or exported artifact folder")
    p.add_argument("--checkpoint", help="weights for a registry name (official FaRL .pth, FaRL trainer file, ours)")
    p.add_argument("--trust-torchscript", action="store_true", help="allow TorchScript checkpoints (runs code from the file)")
    p.add_argument("--data", required=True, help="data set folder")
    p.add_argument("--format", choices=["300w", "wflw", "aflw19", "lapa", "celebamask-hq"], help="default: detect")
    p.add_argument("--json", help="write the metrics here (an existing file is kept unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument("--limit", type=positive_int, help="first N faces only")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed samples (listed) instead of stopping")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--protocol", choices=["farl", "direct"],
                   help="preprocessing protocol: farl (512 crop resized to the network in the model: FaRL's numbers) "
                        "or direct (crop at the network size: the edge path); default: the model's own")
    p.set_defaults(func=cmd_eval)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands():
    """Subcommands that live beside their library code (export, formats, bench, run)."""
    import importlib

    for module in ("farl_edge.export.cli", "farl_edge.runtime.cli", "farl_edge.bench.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module or module.startswith(str(e.name)):
                continue  # that part of the toolchain is not in this build
            raise
        yield mod.register


# Modules that still raise a plain ValueError / KeyError for a user's mistake (the typed export request
# and typed model config work moves them to FarlEdgeError); a plain one raised anywhere else is a bug.
_PLAIN_ERROR_MODULES = frozenset({
    "farl_edge.registry", "farl_edge.crops",
    "farl_edge.export.config", "farl_edge.export.tensorrt_prepare",
    "farl_edge.export.coreml_export", "farl_edge.export.validate", "farl_edge.export.openvino_export",
    "farl_edge.export.onnx_export", "farl_edge.export.onnxruntime_quant",
    "farl_edge.train.finetune", "farl_edge.train.task_data",
})


def _is_user_error(e: BaseException) -> bool:
    """True for a ValueError / KeyError that describes the user's mistake (see ``_PLAIN_ERROR_MODULES``)."""
    from farl_edge.registry import UnknownModelError

    if isinstance(e, UnknownModelError):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") in _PLAIN_ERROR_MODULES


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that closed the pipe shows here, inside the BrokenPipeError handler
        return code
    except (FarlEdgeError, FileNotFoundError, PermissionError) as e:
        print(f"farl-edge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as e:
        # UnknownModelError (a KeyError) and the plain ValueErrors of the modules that have not moved to
        # FarlEdgeError yet are the user's mistakes; any other ValueError / KeyError is a bug: traceback.
        if not _is_user_error(e):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"farl-edge {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        message = missing_module_message(args.command, e)
        if message is None:
            raise
        print(f"farl-edge {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader closed stdout early (`| head`): stop quietly, as a SIGPIPE-killed tool would.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests, notebooks)
            pass
        return 128 + 13
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"farl-edge {args.command}: {what}; partial files were removed", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    # Run the imported module's main, not a second copy of this one as __main__.
    from farl_edge.cli import main as package_main

    sys.exit(package_main())

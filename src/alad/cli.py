"""The ``alad`` command line: thin wrappers over the same functions the Python API exposes.

Every option of a run can also come from a YAML or JSON file (``--config run.yaml``); options given
on the command line override the file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alad.serialization import ArtefactError

logger = logging.getLogger("alad")


def _parse_value(text: str, annotation: Any, name: str) -> Any:
    """Parse one option according to its dataclass annotation; 'none' clears optional values."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional and text.lower() in ("none", "null", ""):
        return None
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    if typing.get_origin(base) is tuple:
        from alad.alignment import windows_from_text

        try:
            return windows_from_text(text) if name == "windows" else tuple(int(p) for p in text.split(","))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    if base is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise argparse.ArgumentTypeError(f"--{name} takes true or false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    if base in (int, float, str):
        try:
            return base(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"--{name} takes a {base.__name__}, got {text!r}") from err
    return text


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per dataclass field, with its help text and default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            type=lambda text, a=hints[f.name], n=f.name: _parse_value(text, a, n),
            help=f"{f.metadata.get('help', '')} (default: {_show(default)})",
        )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def load_run_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON run configuration into a flat dict of option values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type, args: argparse.Namespace) -> Any:
    """Defaults, then the ``--config`` file, then explicit command-line options."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        from_file = load_run_file(args.config)
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise ValueError(f"{args.config}: unknown options {unknown}; known: {sorted(names)}")
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in from_file.items()})
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls(**values)


def _cmd_align(args: argparse.Namespace) -> int:
    from alad.alignment import AlignConfig, align, format_summary

    config = build_config(AlignConfig, args)
    summary = align(args.out, config, show_progress=not args.quiet)
    print(format_summary(summary))
    print(f"adapters saved under {Path(args.out).resolve()}/w<K>; plot: {Path(args.out) / 'alignment_curves.png'}")
    return 0


def describe(path: str | Path) -> str:
    """Human-readable description of an adapter folder or an alignment run folder."""
    from alad.adapter import CONFIG_FILE, AlignmentAdapter
    from alad.alignment import SUMMARY_JSON, format_summary
    from alad.serialization import read_json

    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        adapter = AlignmentAdapter.from_pretrained(path)
        cfg, meta = adapter.config, adapter.metadata
        lines = [
            f"alignment adapter: {path}",
            f"  window K={cfg.window}, student_dim={cfg.student_dim} -> teacher_dim={cfg.teacher_dim}, "
            f"hidden={cfg.hidden_size}, {cfg.activation}, dropout={cfg.dropout}, format v{cfg.version}",
            f"  parameters: {adapter.num_parameters():,}",
        ]
        for key in ("student", "teacher", "student_layer", "teacher_layer", "corpus", "init", "num_train", "num_val"):
            if key in meta:
                lines.append(f"  {key}: {meta[key]}")
        if meta.get("best"):
            best = meta["best"]
            lines.append(
                f"  best epoch {best['epoch']}: held-out cosine {best['val_cosine']:.4f}, MSE {best['val_mse']:.5f}"
            )
        if "mean_predictor" in meta:
            lines.append(f"  trivial mean-token predictor: cosine {meta['mean_predictor']['cosine']:.4f}")
        return "\n".join(lines)
    if (path / SUMMARY_JSON).is_file():
        return f"alignment run: {path}\n\n" + format_summary(read_json(path / SUMMARY_JSON, "run summary"))
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    raise ArtefactError(f"{path} is neither an adapter folder ({CONFIG_FILE}) nor an alignment run ({SUMMARY_JSON})")


def _cmd_info(args: argparse.Namespace) -> int:
    print(describe(args.path))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from alad.alignment import AlignConfig

    parser = argparse.ArgumentParser(prog="alad", description="Alignment Adapters for compressed encoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p_align = sub.add_parser(
        "align",
        help="train alignment adapters (stage 1; stage 2 with --init)",
        description="Align a student encoder to a teacher on unlabelled text, for several window sizes at once.",
    )
    p_align.add_argument("--out", default="runs/align", help="run folder (default: runs/align)")
    p_align.add_argument("--config", help="YAML or JSON file of options (overridden by flags)")
    p_align.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p_align, AlignConfig)
    p_align.set_defaults(func=_cmd_align)

    p_info = sub.add_parser("info", help="describe an adapter or an alignment run folder")
    p_info.add_argument("path")
    p_info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ArtefactError, RuntimeError) as err:
        print(f"alad {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alad {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``alad compress --method layers``: keep some transformer layers (see :mod:`alad.compression.layer_dropping`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from alad.compression import CompressionMethod, register_method


class LayerDropping(CompressionMethod):
    name = "layers"
    help = "keep the listed transformer layers (--keep-layers 0,1); an ordinary Hugging Face folder"
    kind = "layer-dropped-encoder"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--keep-layers", default=argparse.SUPPRESS, help="layers: layer indices to keep, e.g. 0,1")

    def settings_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        from alad.compression.layer_dropping import parse_layers

        if not hasattr(args, "keep_layers"):
            raise ValueError("--method layers needs --keep-layers, e.g. --keep-layers 0,1")
        return {"keep_layers": parse_layers(args.keep_layers)}

    def validate(self, settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - {"keep_layers"})
        if unknown:
            raise ValueError(f"method layers takes keep_layers only, not {unknown}")
        if "keep_layers" not in settings:
            raise ValueError("method layers needs keep_layers, e.g. [0, 1]")
        return dict(settings)

    def describe(self, settings: dict[str, Any], source: str, out: Path) -> str:
        return f"kept layers {settings['keep_layers']} of {source}: {out}"

    def run(self, source: str | os.PathLike, out: str | os.PathLike, settings: dict[str, Any]) -> Path:
        from alad.compression.layer_dropping import drop_layers

        return drop_layers(source, settings["keep_layers"], out)


register_method(LayerDropping())

"""Run configuration files (YAML or JSON): read below the CLI and the recipe, which both use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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

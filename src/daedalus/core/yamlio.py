"""Safe YAML loading with errors that name the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from daedalus.core.errors import DaedalusError, at


class _Loader(yaml.SafeLoader):
    """Safe loader that leaves dates as text, so pydantic validates them and names the key."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """Load a YAML file that must hold a mapping; `what` says what the file is for."""
    path = Path(path)
    if not path.is_file():
        raise DaedalusError(f"{path}: {what} file not found (fix: create it or pass the right path)")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise at(path, None, f"malformed YAML at {where}: {exc.problem}",
                 "fix the YAML syntax there") from None
    except yaml.YAMLError as exc:
        raise at(path, None, f"malformed YAML: {exc}", "fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise at(path, None, f"expected a mapping at the top level, got {type(data).__name__}",
                 f"write the {what} as `key: value` pairs")
    return data


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)

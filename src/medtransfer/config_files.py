"""Reading experiment and pre-training files: YAML in, validated models out, every error in the file's own terms.

Each failure is one ``ConfigError`` naming the file, the key as written in the file (without pydantic's internal
union tags), the bad value and what is allowed there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medtransfer.errors import ConfigError, allowed
from medtransfer.yaml_loader import safe_load_unique

# the tags config.py's discriminated unions put after ``pretrain`` and ``init`` in an error's location
UNION_TAGS = {"pretrain": ("file", "inline"), "init": ("file", "source")}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models inside a field's annotation, however deeply nested (Optional, list, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Walk ``loc`` through nested models to list the keys allowed where an unknown key was found."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue
        nested = _models_in(field.annotation)
        if nested:
            model = nested[0]
    return list(model.model_fields)


def _user_loc(loc: tuple) -> tuple:
    """``loc`` without the union tags pydantic inserts after ``pretrain``/``init``, so keys read as in the file."""
    return tuple(p for i, p in enumerate(loc) if not (i and p in UNION_TAGS.get(loc[i - 1], ())))


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = _user_loc(tuple(e["loc"]))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if not loc and e["type"] == "value_error":  # a check across keys: its message names them; the input is all
            lines.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key; allowed here: {allowed(_allowed_keys(model, loc))}")
        elif e["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {e.get('input')!r} rejected: {msg}")
    return ConfigError(f"{source}: " + "; ".join(lines))


def load_config(path: str | Path, model: type[BaseModel]):
    """Read and validate a YAML file into ``model``; every failure is one ConfigError naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = safe_load_unique(path.read_text())
    except yaml.YAMLError as err:  # PyYAML's text spans several lines and calls the file "<unicode string>"
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(filter(None, (getattr(err, "context", None), getattr(err, "problem", None))))
        raise ConfigError(f"{path}: malformed YAML{where}: {problem or ' '.join(str(err).split())}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return validate_config(data, model, source=str(path), base=path.parent.resolve())


def validate_config(data: dict, model: type[BaseModel], source: str = "config", base: Path | None = None):
    try:
        return model.model_validate(data, context={"base": base})
    except ValidationError as err:
        raise format_validation_error(err, model, source) from None
    except ConfigError as err:  # raised by registries inside validators
        raise ConfigError(f"{source}: {err}") from None

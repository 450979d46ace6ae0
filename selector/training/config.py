"""Configuration of the training engine: YAML keys = dataclass fields = CLI flags (as in alignment-handbook).

``--config file.yaml`` is read first, then any ``--<field> value`` flag overrides it; unknown keys and values of
the wrong type are a one-line :class:`~selector.errors.ConfigError`. The configs shipped with the package
(``selector/training/configs/*.yaml``, also reachable as ``recipes/configs/`` in a checkout) are found by name
with :func:`find_config`.

Example:
    >>> from selector.training.finetune import FinetuneConfig
    >>> cfg = resolve_config(FinetuneConfig, find_config("tiny_cpu"), max_steps=3)
    >>> cfg.max_steps, cfg.per_device_train_batch_size
    (3, 2)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from selector.errors import ConfigError
from selector.fileio import atomic_write_text, load_yaml_mapping


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp) -> tuple[type, bool]:
    """``int | None`` -> (int, optional); ``list[str] | None`` -> (list, True)."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if args and typing.get_origin(tp) is not list:
        non_none = [a for a in args if a is not type(None)]
        tp = non_none[0] if len(non_none) == 1 else str
    origin = typing.get_origin(tp)
    return (origin or tp), optional


def _coerce(name: str, value: Any, tp) -> Any:
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option {name!r} may not be empty")
    if isinstance(value, str) and optional and value.lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is list:
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            return [str(v) for v in value]
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name!r}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None
    return value


def make_config(cls, values: dict[str, Any]):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
    types = _field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(types)}")
    kwargs = {name: _coerce(name, value, types[name]) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def resolve_config(cls, config=None, **overrides):
    """Turn a dataclass instance, mapping, or YAML path (+ keyword overrides) into a validated ``cls``."""
    if isinstance(config, cls):
        values = dataclasses.asdict(config)
    elif config is None:
        values = {}
    elif isinstance(config, (str, os.PathLike)):
        values = load_yaml_mapping(config)
    elif isinstance(config, dict):
        values = dict(config)
    else:
        raise ConfigError(f"expected a {cls.__name__}, a dict or a YAML path, got {type(config).__name__}")
    values.update(overrides)
    return make_config(cls, values)


def parse_args(cls, argv: list[str] | None = None, *, prog: str | None = None):
    """``--config file.yaml`` plus ``--<field> value`` flags -> ``cls``; flags override the file."""
    types = _field_types(cls)
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").split("\n")[0])
    parser.add_argument("--config", help="YAML file whose keys are the options below, or a shipped config's name")
    for field in dataclasses.fields(cls):
        base, _ = _base_type(types[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        parser.add_argument(
            f"--{field.name}",
            default=argparse.SUPPRESS,
            help=f"{getattr(base, '__name__', base)} (default: {default!r})",
        )
    args = vars(parser.parse_args(argv))
    config = args.pop("config", None)
    return resolve_config(cls, None if config is None else find_config(config), **args)


def write_config(config, path: str | os.PathLike) -> None:
    """Write the resolved configuration (every default filled in) as YAML, atomically."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def shipped_configs() -> dict[str, str]:
    """``{name: path}`` of the configs installed with the package (``selector/training/configs/*.yaml``)."""
    folder = resources.files("selector.training") / "configs"
    # an installed wheel and a checkout both keep the YAML files as plain files on disk
    return {Path(str(p)).stem: str(p) for p in folder.iterdir() if str(p).endswith(".yaml")}


def find_config(spec: str | os.PathLike) -> str:
    """The path of a training config given as a file path or as the name of a shipped config.

    A path that exists wins; otherwise ``spec`` (with or without ``.yaml``) names one of
    :func:`shipped_configs`, e.g. ``"proxy_smolvlm_256m"``.

    Raises:
        ConfigError: neither a file nor a shipped config's name.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return str(path.resolve())
    if path.exists():
        raise ConfigError(f"config {text}: is a directory, expected a YAML file")
    shipped = shipped_configs()
    name = text[: -len(".yaml")] if text.endswith(".yaml") else text
    if os.sep not in name and "/" not in name and name in shipped:
        return shipped[name]
    raise ConfigError(f"config {text}: no such file, and not a shipped config ({', '.join(sorted(shipped))})")


__all__ = ["find_config", "make_config", "parse_args", "resolve_config", "shipped_configs", "write_config"]

"""Configuration of the training engine: YAML keys = dataclass fields = CLI flags, parsed by ``HfArgumentParser``.

The command line follows alignment-handbook and TRL: an optional YAML file first (a path or the name of a config
shipped with the package, positional or as ``--config``), then ``--<field> value`` flags that override it::

    python recipes/finetune.py tiny_cpu --learning_rate 1e-4 --lora_target_modules q_proj v_proj --bf16

Flags are parsed by :class:`transformers.HfArgumentParser` over the dataclass, so booleans take no value
(``--use_peft``, ``--no_freeze_vision_tower``; ``--use_peft false`` also works) and lists take several
(``--report_to tensorboard``). The field names are TRL's / transformers' (``dataset_name``, ``use_peft``,
``bf16``, ``eval_strategy``, ...). An unknown key or flag and a value of the wrong type are a one-line
:class:`~selector.errors.ConfigError` (exit code 2 from the scripts). Old names listed in a dataclass's
``DEPRECATED_ALIASES`` still work with a warning. The configs shipped with the package
(``selector/training/configs/*.yaml``, also reachable as ``recipes/configs/`` in a checkout) are found by name
with :func:`find_config`.

Example:
    >>> from selector.training.finetune import FinetuneConfig
    >>> cfg = parse_args(FinetuneConfig, ["tiny_cpu", "--max_steps", "3", "--lora_target_modules", "q_proj", "v_proj"])
    >>> cfg.max_steps, cfg.per_device_train_batch_size, cfg.lora_target_modules
    (3, 2, ['q_proj', 'v_proj'])
"""

from __future__ import annotations

import dataclasses
import logging
import os
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from selector.errors import ConfigError
from selector.fileio import atomic_write_text, load_yaml_mapping

logger = logging.getLogger(__name__)

_YAML_SUFFIXES = (".yaml", ".yml")


def _field_types(cls) -> dict[str, Any]:
    return {
        name: tp
        for name, tp in typing.get_type_hints(cls).items()
        if name in {f.name for f in dataclasses.fields(cls)}
    }


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
                # a YAML string or an old comma-joined flag value; lists are the normal form
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            if name.endswith("_ids"):
                return [str(v) for v in value]
            # the old comma-joined flag form (--lora_target_modules q_proj,v_proj); ids may contain commas
            return [part.strip() for v in value for part in str(v).split(",") if part.strip()]
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name!r}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None
    return value


def _apply_aliases(cls, values: dict[str, Any]) -> dict[str, Any]:
    """Rename deprecated keys (``DEPRECATED_ALIASES``: old -> new name, or old -> function(value) -> dict)."""
    aliases = getattr(cls, "DEPRECATED_ALIASES", {})
    out: dict[str, Any] = {}
    for key, value in values.items():
        target = aliases.get(key)
        if target is None:
            out[key] = value
            continue
        if callable(target):
            new = target(value)
            # the converter's docstring says what to use instead
            logger.warning("option %r is deprecated; %s", key, (target.__doc__ or "").strip())
        else:
            new = {target: value}
            logger.warning("option %r is deprecated; use %r", key, target)
        for new_key, new_value in new.items():
            if new_key in values:
                raise ConfigError(f"options {key!r} (deprecated) and {new_key!r} both given; keep {new_key!r}")
            out[new_key] = new_value
    return out


def make_config(cls, values: dict[str, Any]):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
    types = _field_types(cls)
    values = _apply_aliases(cls, dict(values))
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
    values = _apply_aliases(cls, values)
    values.update(_apply_aliases(cls, overrides))
    return make_config(cls, values)


def _parser(cls, prog: str | None):
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        # argparse prints usage and exits; a user mistake here is one line and exit code 2 like everywhere else
        def error(self, message):
            raise ConfigError(message)

    # no abbreviations: a misspelt option (--learning_rat) must be an error, not a silent prefix match
    parser = Parser(cls, prog=prog, description=(cls.__doc__ or "").split("\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--config", help="YAML file whose keys are the options below, or a shipped config's name (or positional)"
    )
    return parser


def _rename_flags(cls, argv: list[str]) -> list[str]:
    """``--old value`` -> ``--new value`` for the deprecated aliases (with a warning); ``--mixed_precision bf16``
    -> ``--bf16 true``."""
    aliases = getattr(cls, "DEPRECATED_ALIASES", {})
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in aliases:
            if eq:
                value, i = inline, i + 1
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 2
            else:
                value, i = "true", i + 1
            for key, new in _apply_aliases(cls, {name: value}).items():
                out += [f"--{key}", *(new if isinstance(new, list) else [str(new)])]
            continue
        out.append(arg)
        i += 1
    return out


def parse_args(cls, argv: list[str] | None = None, *, prog: str | None = None):
    """``[CONFIG] [--config CONFIG] [--<field> value ...]`` -> ``cls``; flags override the YAML file.

    ``CONFIG`` is a YAML path or a shipped config's name (:func:`find_config`). The YAML is checked like any
    mapping (:func:`make_config`: unknown keys and wrong types are errors) and becomes the parser's defaults, so
    every flag the parser knows overrides it.

    Raises:
        ConfigError: an unknown flag or key, a bad value, or a missing config file (one line).
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    config = None
    if argv and not argv[0].startswith("-"):
        config, argv = argv[0], argv[1:]
    argv = _rename_flags(cls, argv)
    parser = _parser(cls, prog)
    namespace, rest = parser.parse_known_args(argv)
    if namespace.config is not None:
        if config is not None:
            raise ConfigError(f"two configs given: {config} and --config {namespace.config}")
        config = namespace.config
    if rest:
        raise ConfigError(f"unknown argument(s) {' '.join(rest)} (see --help for the options of {cls.__name__})")
    if config is not None:
        base = resolve_config(cls, find_config(config))
        parser.set_defaults(**dataclasses.asdict(base))
    try:
        # the first output is the dataclass; the namespace of the extra --config flag follows it
        parsed = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)[0]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # flags were typed by argparse; the same coercion as YAML values catches e.g. "none" for optional fields
    return make_config(cls, dataclasses.asdict(parsed))


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
    name = text
    for suffix in _YAML_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if os.sep not in name and "/" not in name and name in shipped:
        return shipped[name]
    raise ConfigError(f"config {text}: no such file, and not a shipped config ({', '.join(sorted(shipped))})")


__all__ = ["find_config", "make_config", "parse_args", "resolve_config", "shipped_configs", "write_config"]

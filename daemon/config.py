"""Configuration: a TOML file plus ``KLINED_<KEY>`` environment variables, environment winning (docs/configuration.md).

Every key is declared once in :class:`daemon.settings.Settings`, with its kind, section and meaning
(docs/configuration.md is generated from them: ``python -m daemon.config_docs``). An unknown key
(in the file or the environment) or a bad value raises :class:`ConfigError` whose message names the key, and
start-up stops on it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from daemon.config_values import KINDS
from daemon.settings import Settings
from protocol.timeframes import can_derive, parse_timeframe

__all__ = ["ENV_PREFIX", "KEYS", "ConfigError", "Origin", "Settings", "load_settings", "load_with_origins"]

ENV_PREFIX: Final = "KLINED_"


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the key."""


KEYS: Final = tuple(f.name for f in attrs.fields(Settings))
_KIND_OF: Final = {f.name: f.metadata["kind"] for f in attrs.fields(Settings)}


Origin = Literal["default", "file", "env"]


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``path`` (optional TOML file) overlaid with ``env`` (default: ``os.environ``)."""
    return load_with_origins(path, env)[0]


def load_with_origins(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[Settings, dict[str, Origin]]:
    """:func:`load_settings`, and where each key's value came from (``klined check-config --print``)."""
    from_file = _from_file(Path(path)) if path is not None else {}
    from_env = _from_env(os.environ if env is None else env)
    settings = Settings(**{**from_file, **from_env})
    _check_derived(settings)
    origins: dict[str, Origin] = {
        key: "env" if key in from_env else "file" if key in from_file else "default" for key in KEYS
    }
    return _with_token_file(settings), origins


def _with_token_file(settings: Settings) -> Settings:
    """``ingest_token_file`` read into ``ingest_token`` (one token, surrounding whitespace dropped)."""
    if not settings.ingest_token_file:
        return settings
    if settings.ingest_token:
        raise ConfigError("ingest_token and ingest_token_file are both set: keep one")
    path = Path(settings.ingest_token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"bad value for ingest_token_file: cannot read {path}: {e}") from None
    if not token:
        raise ConfigError(f"bad value for ingest_token_file: {path} is empty")
    return attrs.evolve(settings, ingest_token=token)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in _KIND_OF:
            raise ConfigError(f"unknown config key {key!r} in {path}")
        out[key] = _parse(key, raw, from_env=False, where=str(path))
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _KIND_OF:
            raise ConfigError(f"unknown environment variable {name} (no config key {key!r})")
        out[key] = _parse(key, raw, from_env=True, where=f"environment variable {name}")
    return out


def _parse(key: str, raw: object, *, from_env: bool, where: str) -> Any:
    try:
        return KINDS[_KIND_OF[key]][0](raw, from_env)
    except ValueError as e:
        raise ConfigError(f"bad value for {key} ({where}): {e}") from None


def _check_derived(settings: Settings) -> None:
    base = parse_timeframe(settings.derived_base_timeframe)
    for name in settings.derived_timeframes:
        if not can_derive(base, parse_timeframe(name)):
            raise ConfigError(f"bad value for derived_timeframes: {name} cannot be built from {base.name} candles")

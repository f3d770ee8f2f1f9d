"""Run settings from a config file and environment variables, the way the AWS tools do it.

Precedence, highest first: command-line options, environment variables ``FSDGRAPH_<NAME>``,
the ``[run]`` table of the config file, built-in defaults. The file is ``$FSDGRAPH_CONFIG_FILE``
or ``~/.fsdgraph/config.toml``; a missing default file is fine, a missing named file is an error.

::

    # ~/.fsdgraph/config.toml
    [run]
    workers = 8
    channel = "object"
    peer_timeout_s = 120

Every value is checked against its type and its range, and an error names where it came from
(the file and table, the variable, or the option) and the field. A setting given on the command
line is never read from the environment or the file, so a broken ``FSDGRAPH_WORKERS`` cannot fail
a run given ``--workers``. Credentials never belong here and are never printed.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fsdgraph import defaults
from fsdgraph.errors import ConfigError

#: The layer kernels a run can ask for (``fsdgraph.kernels.choice``).
KERNELS = ("auto", "numba", "scipy")


@dataclass(frozen=True)
class RunSettings:
    """What a command-line run can be told; see the module docstring for where it comes from."""

    workers: int = defaults.WORKERS
    channel: str = ""  #: "": the backend's default channel (``Backend.default_channel``)
    backend: str = defaults.BACKEND
    partitioner: str = defaults.PARTITIONER
    branching: int = defaults.BRANCHING
    topics: int = defaults.TOPICS
    direct: bool = False
    timeout_s: float = defaults.TIMEOUT_S
    stall_timeout_s: float = defaults.STALL_TIMEOUT_S
    peer_timeout_s: float = defaults.PEER_TIMEOUT_S
    relaunches: int = defaults.RELAUNCHES  #: lost workers relaunched per run (0: none)
    relaunch_after_s: float = defaults.RELAUNCH_AFTER_S  #: silence after which one is lost
    #: The workers' layer kernel: auto (numba if installed, else scipy), numba or scipy.
    kernel: str = "auto"
    kernel_threads: int = 0  #: threads per layer product (0: one per vCPU on Lambda, else 1)
    #: A TOML/JSON price table for the bill and the auto channel ("": the backend's prices).
    prices: str = ""
    #: How the workers share the work: model, data, hybrid, or auto (the planner picks).
    strategy: str = defaults.STRATEGY
    replicas: int = 0  #: hybrid: model replicas (0: the planner's choice or none)
    collapse_at: int = 0  #: gather the live rows onto one worker per group from this layer (0: no)
    objective: str = "time"  #: auto: what the planner minimises, time or cost
    memory_mb: int = defaults.MEMORY_MB  #: auto: the functions' memory the planner plans for


#: The command-line option of each setting that has one.
OPTIONS = {"workers": "--workers", "channel": "--channel", "backend": "--backend",
           "partitioner": "--partitioner", "branching": "--branching", "direct": "--direct",
           "timeout_s": "--timeout", "prices": "--prices", "kernel": "--kernel",
           "kernel_threads": "--kernel-threads", "strategy": "--strategy",
           "replicas": "--replicas", "collapse_at": "--collapse-at", "objective": "--objective",
           "memory_mb": "--memory"}


def check_setting(name: str, value: Any, where: str) -> None:
    """ConfigError naming ``where`` unless ``value`` is in range for setting ``name``: counts
    >= 1 (``topics`` >= 0), times positive and finite (``not x > 0`` also catches NaN), names
    non-empty.

    >>> check_setting("timeout_s", float("nan"), "FSDGRAPH_TIMEOUT_S")
    Traceback (most recent call last):
    ...
    fsdgraph.errors.ConfigError: FSDGRAPH_TIMEOUT_S: timeout_s must be a positive finite ...
    """
    if name in ("workers", "branching"):
        ok, expected = value >= 1, "a positive integer"
    elif name in ("topics", "relaunches", "kernel_threads", "replicas", "collapse_at"):
        ok, expected = value >= 0, "an integer >= 0"
    elif name == "memory_mb":
        ok, expected = 128 <= value <= 10240, "a function memory size in MB (128 to 10240)"
    elif name == "strategy":
        ok, expected = (value in ("auto", *defaults.STRATEGIES),
                        f"auto or one of {', '.join(defaults.STRATEGIES)}")
    elif name == "objective":
        ok, expected = value in ("time", "cost"), "time or cost"
    elif name.endswith("_s"):
        ok, expected = value > 0 and math.isfinite(value), "a positive finite number of seconds"
    elif name in ("channel", "backend", "partitioner"):
        ok, expected = bool(value.strip()), "a non-empty name"
    elif name == "kernel":
        ok, expected = value in KERNELS, f"one of {', '.join(KERNELS)}"
    else:
        return
    if not ok:
        raise ConfigError(f"{where}: {name} must be {expected}, got {value!r}")


def coerce(name: str, value: Any, kind: type, where: str) -> Any:
    """``value`` as ``kind`` (int, float, str or bool), or a ConfigError naming ``where``."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
                return value.lower() in ("1", "true", "yes")
        if kind is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    except ValueError:
        pass
    raise ConfigError(f"{where}: {name} must be {kind.__name__}, got {value!r}")


def read_table(path: str | Path | None, name: str,
               environ: Mapping[str, str]) -> tuple[Path, dict[str, Any]]:
    """The config file's path and its table ``[name]`` (empty if the default file is absent;
    a file named explicitly must exist)."""
    explicit = path is not None or "FSDGRAPH_CONFIG_FILE" in environ
    config_path = Path(path) if path is not None else Path(
        environ.get("FSDGRAPH_CONFIG_FILE", "~/.fsdgraph/config.toml")).expanduser()
    if not config_path.is_file():
        if explicit:
            raise ConfigError(f"config file {config_path} does not exist")
        return config_path, {}
    try:
        data = tomllib.loads(config_path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from exc
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{config_path}: [{name}] must be a table")
    return config_path, table


def read_settings(path: str | Path | None, name: str, kinds: Mapping[str, type],
                  env_prefix: str, environ: Mapping[str, str],
                  skip: Collection[str] = ()) -> dict[str, tuple[Any, str]]:
    """The settings of table ``[name]``, then of the variables ``<env_prefix><KEY>``, each
    coerced to its kind in ``kinds``, with where it came from (for later error messages): the
    one reading rule of every settings table (``[run]``, a backend's own). Settings in ``skip``
    (given on the command line) are neither read nor checked, beyond the file's names.

    >>> read_settings(None, "run", {"workers": int}, "FSDGRAPH_", {"FSDGRAPH_WORKERS": "8"})
    {'workers': (8, 'environment variable FSDGRAPH_WORKERS')}
    """
    found: dict[str, tuple[Any, str]] = {}
    config_path, table = read_table(path, name, environ)
    for key, value in table.items():
        if key not in kinds:
            raise ConfigError(f"{config_path}: unknown setting {name}.{key}; known: "
                              f"{', '.join(sorted(kinds))}")
        if key in skip:
            continue
        where = f"{config_path} [{name}]"
        found[key] = (coerce(key, value, kinds[key], where), where)
    for key, kind in kinds.items():
        env = f"{env_prefix}{key.upper()}"
        if env in environ and key not in skip:
            where = f"environment variable {env}"
            found[key] = (coerce(key, environ[env], kind, where), where)
    return found


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> RunSettings:
    """Settings from file, then environment, then ``overrides`` (None values are ignored; a
    setting overridden is not read from the file or the environment). Every value is
    range-checked, and an error names its source (file and table, variable, or option)."""
    environ = os.environ if environ is None else environ
    kinds = {f.name: type(f.default) for f in fields(RunSettings)}
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(kinds))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]}; known: {', '.join(sorted(kinds))}")
    found = read_settings(path, "run", kinds, "FSDGRAPH_", environ, skip=given)
    for key, value in given.items():
        where = f"option {OPTIONS.get(key, '--' + key.replace('_', '-'))}"
        found[key] = (coerce(key, value, kinds[key], where), where)
    for key, (value, where) in found.items():
        check_setting(key, value, where)
    return RunSettings(**{key: value for key, (value, _) in found.items()})

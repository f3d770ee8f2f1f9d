"""Simulator profiles: every latency, rate, price-free constant the simulator uses, each with its
source, read from TOML files (``profiles/aws.toml``, ``paper.toml``, ``local.toml``).

A profile file is flat tables of numbers or strings. A number is written with its source::

    [request.put]
    median_s = { value = 0.03, source = "AWS_FIGURES.md §3: S3 small requests, tens of ms" }

A user file (``--profile F``) may write bare values (their source is then the file). Every file
is merged over its ``base`` (a built-in profile name; default ``aws``), so it needs only the keys
it changes. The keys and their types are those of ``aws.toml``: an unknown key or a value of the
wrong type is a :class:`~fsdgraph.errors.ConfigError` naming the file and the key.

>>> p = load_profile("aws")
>>> p.num("function.mb_per_vcpu")
1769.0
>>> load_profile("aws", {"request.put.median_s": 0.05}).num("request.put.median_s")
0.05
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fsdgraph.errors import ConfigError

#: The profiles that ship with the package.
BUILTIN = ("aws", "paper", "local")
#: The profile every other one is merged over.
DEFAULT = "aws"
#: Request kinds the simulator times and counts.
KINDS = ("invoke", "publish", "send", "receive", "delete", "get", "put", "list", "query")

Value = float | str


@dataclass(frozen=True)
class Profile:
    """A merged profile: ``values`` by dotted key (``"request.put.median_s"``), the ``sources``
    of each, and the ``files`` it was read from (the base first)."""

    name: str
    values: dict[str, Value]
    sources: dict[str, str]
    files: tuple[str, ...] = field(default_factory=tuple)

    def num(self, key: str) -> float:
        """The number at ``key`` (a ConfigError if the key is unknown or not a number)."""
        value = self._get(key)
        if isinstance(value, str):
            raise ConfigError(f"profile {self.name}: {key} is text, not a number")
        return float(value)

    def text(self, key: str) -> str:
        """The text at ``key``."""
        value = self._get(key)
        if not isinstance(value, str):
            raise ConfigError(f"profile {self.name}: {key} is a number, not text")
        return value

    def source(self, key: str) -> str:
        """Where the value at ``key`` comes from."""
        self._get(key)
        return self.sources.get(key, "")

    def _get(self, key: str) -> Value:
        try:
            return self.values[key]
        except KeyError:
            raise ConfigError(f"profile {self.name}: no key {key!r}") from None

    def replaced(self, values: Mapping[str, Value], source: str) -> Profile:
        """A copy with ``values`` (known keys of the same types) set, all from ``source``."""
        merged = dict(self.values)
        sources = dict(self.sources)
        _merge(merged, sources, dict(values), source, origin=source)
        return Profile(self.name, merged, sources, self.files)

    def to_dict(self) -> dict[str, Any]:
        """Every value with its source (JSON-able)."""
        return {"name": self.name, "files": list(self.files),
                "values": {k: {"value": v, "source": self.sources.get(k, "")}
                           for k, v in sorted(self.values.items())}}


def _flatten(table: Mapping[str, Any], prefix: str, origin: str,
             out: dict[str, tuple[Any, str | None]]) -> None:
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and "value" in value:
            extra = set(value) - {"value", "source"}
            if extra:
                raise ConfigError(f"{origin}: {dotted}: unknown field(s) {', '.join(sorted(extra))}"
                                  " (expected value and source)")
            source = value.get("source")
            if source is not None and not isinstance(source, str):
                raise ConfigError(f"{origin}: {dotted}.source must be text")
            out[dotted] = (value["value"], source)
        elif isinstance(value, Mapping):
            _flatten(value, dotted + ".", origin, out)
        else:
            out[dotted] = (value, None)


def _merge(values: dict[str, Value], sources: dict[str, str], new: Mapping[str, Any],
           default_source: str, *, origin: str) -> None:
    """Check ``new`` (flat) against the keys and types already in ``values`` and merge it."""
    for key, raw in new.items():
        value, source = raw if isinstance(raw, tuple) else (raw, None)
        if key not in values:
            raise ConfigError(f"{origin}: unknown key {key!r} (known keys: see "
                              "fsdgraph/simulate/profiles/aws.toml)")
        want = values[key]
        if isinstance(want, str):
            if not isinstance(value, str):
                raise ConfigError(f"{origin}: {key} must be text, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{origin}: {key} must be a number, got {value!r}")
        elif value < 0:
            raise ConfigError(f"{origin}: {key} must be >= 0, got {value!r}")
        else:
            value = float(value)
        values[key] = value
        sources[key] = source or default_source


def _read(path: Path | None, name: str) -> tuple[dict[str, Any], str]:
    """A profile file's top-level table and its displayed name."""
    if path is None:
        ref = resources.files("fsdgraph.simulate") / "profiles" / f"{name}.toml"
        origin = f"fsdgraph/simulate/profiles/{name}.toml"
        try:
            return tomllib.loads(ref.read_text(encoding="utf-8")), origin
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    origin = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read the profile: {exc}") from exc
    try:
        return tomllib.loads(data.decode("utf-8")), origin
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc


def _load(name_or_path: str | os.PathLike[str], depth: int = 0) -> Profile:
    if depth > 4:
        raise ConfigError(f"profile {name_or_path}: too many nested bases")
    text = os.fspath(name_or_path)
    builtin = text in BUILTIN
    table, origin = _read(None if builtin else Path(text), text)
    base = table.pop("base", None if text == DEFAULT else DEFAULT)
    table.pop("description", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{origin}: base must be a profile name, got {base!r}")
    flat: dict[str, tuple[Any, str | None]] = {}
    _flatten(table, "", origin, flat)
    if base is None:  # the root profile defines the keys
        values: dict[str, Value] = {}
        sources: dict[str, str] = {}
        for key, (value, source) in flat.items():
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ConfigError(f"{origin}: {key} must be a number or text, got {value!r}")
            if not source and not isinstance(value, str):
                raise ConfigError(f"{origin}: {key} has no source")
            values[key] = value if isinstance(value, str) else float(value)
            sources[key] = source or origin
        return Profile(text, values, sources, (origin,))
    parent = _load(base, depth + 1)
    values, sources = dict(parent.values), dict(parent.sources)
    _merge(values, sources, flat, f"file {origin}", origin=origin)
    name = Path(text).stem if not builtin else text
    return Profile(name, values, sources, (*parent.files, origin))


def load_profile(name_or_path: str | os.PathLike[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Profile:
    """A built-in profile by name (``aws``, ``paper``, ``local``; default ``aws``) or a TOML
    file merged over its ``base`` (default ``aws``), then ``overrides`` (dotted keys) on top."""
    profile = _load(name_or_path if name_or_path is not None else DEFAULT)
    if profile.name == "local" and profile.files[-1].startswith("fsdgraph/"):
        # The built-in local profile describes the machine it runs on: its workers share its
        # cores.
        profile = Profile(profile.name, {**profile.values, "function.host_cores":
                                         float(os.cpu_count() or 1)},
                          {**profile.sources, "function.host_cores": "this machine: "
                                                                     "os.cpu_count()"},
                          profile.files)
    if overrides:
        flat: dict[str, tuple[Any, str | None]] = {}
        _flatten(overrides, "", "overrides", flat)
        values, sources = dict(profile.values), dict(profile.sources)
        _merge(values, sources, flat, "overrides", origin="overrides")
        profile = Profile(profile.name, values, sources, profile.files)
    return profile


def as_profile(profile: Profile | str | os.PathLike[str] | None) -> Profile:
    """``profile`` itself, or the profile it names."""
    return profile if isinstance(profile, Profile) else load_profile(profile)

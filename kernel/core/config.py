"""INI configuration: ``BASTION_CONFIG``, else ``./bastion.ini``, else defaults.

Every section is claimed by its reader with a schema (``config.section``):
values are typed and checked there, and a bad value, an unknown key or an
unclaimed section stops the start with one line naming the file, section, key
and what is accepted. ``${NAME}`` in a value is replaced by the environment
variable ``NAME`` (an unset one is an error).
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.core.errors import ConfigError
from kernel.core.hosts import DEVELOPMENT_HOSTS, HostMatcher
from kernel.core.urls import redact

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SIZE = re.compile(r"^\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


@dataclass(frozen=True)
class Option:
    """One key of a section: how to parse it, its default, what it accepts."""

    parse: Callable[[str], Any]
    default: Any
    accepted: str
    help: str = ""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def Bool(default: bool, help: str = "") -> Option:
    """A boolean: true/false, yes/no, on/off, 1/0."""
    return Option(_bool, default, "true or false", help)


def Int(default: int, help: str = "", min: int | None = None, max: int | None = None) -> Option:
    """An integer, optionally bounded."""

    def parse(text: str) -> int:
        value = int(text.strip())
        if (min is not None and value < min) or (max is not None and value > max):
            raise ValueError(text)
        return value

    bounds = f" from {min}" if min is not None else ""
    bounds += f" to {max}" if max is not None else ""
    return Option(parse, default, f"an integer{bounds}", help)


def Float(default: float, help: str = "", min: float | None = None) -> Option:
    """A number, optionally bounded below."""

    def parse(text: str) -> float:
        value = float(text.strip())
        if value != value or (min is not None and value < min):
            raise ValueError(text)
        return value

    return Option(parse, default, "a number" + (f" of at least {min}" if min is not None else ""), help)


def Str(default: str, help: str = "", pattern: str | None = None, accepted: str = "a string") -> Option:
    """A string, optionally matching a regular expression."""

    def parse(text: str) -> str:
        value = text.strip()
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ValueError(text)
        return value

    return Option(parse, default, accepted, help)


def Choice(default: str, choices: tuple[str, ...], help: str = "") -> Option:
    """One of a fixed set of words."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(text)
        return value

    return Option(parse, default, "one of " + ", ".join(choices), help)


def List(default: tuple[str, ...] = (), help: str = "", item: Callable[[str], Any] | None = None,
         accepted: str = "a comma- or newline-separated list") -> Option:
    """A list separated by commas or new lines; ``item`` checks each entry."""

    def parse(text: str) -> tuple:
        items = [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]
        return tuple(item(i) if item else i for i in items)

    return Option(parse, tuple(default), accepted, help)


def Size(default: int, help: str = "") -> Option:
    """A size in bytes, with an optional unit: 1048576, 1024KiB, 1MiB."""

    def parse(text: str) -> int:
        match = _SIZE.match(text)
        if not match:
            raise ValueError(text)
        value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
        if value < 1:
            raise ValueError(text)
        return value

    return Option(parse, default, "a size in bytes, such as 1048576 or 1MiB", help)


def _network(text: str):
    return ipaddress.ip_network(text, strict=False)


def Networks(help: str = "", default: tuple[str, ...] = ()) -> Option:
    """A list of IP addresses or CIDR networks (``default`` written the same way)."""
    option = List((), help, item=_network, accepted="a list of IP addresses or networks such as 10.0.0.0/8")
    return Option(option.parse, tuple(_network(d) for d in default), option.accepted, help)


class Settings(Mapping[str, Any]):
    """The typed values of one section; keys read as attributes too."""

    def __init__(self, name: str, values: dict[str, Any]):
        self._name = name
        self._values = values
        # Read on every call (a tenant's skew, its limits): an attribute of the instance is found without
        # __getattr__. A key the class itself has (``get``, ``items``) stays the method's, as it always was.
        self.__dict__.update((key, value) for key, value in values.items()
                             if key.isidentifier() and not hasattr(type(self), key) and not key.startswith("_"))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"[{self._name}] has no key {key!r}") from None

    def __repr__(self) -> str:
        shown = {key: redact(value) if isinstance(value, str) else value for key, value in self._values.items()}
        return f"Settings({self._name!r}, {shown!r})"


@dataclass(frozen=True)
class _Claim:
    """Who claimed a section, with which schema (None: free-form), and what it read."""

    owner: str
    schema: Mapping[str, Option] | None
    value: Settings | dict[str, str]


def _caller_package() -> str:
    """The top-level package of the code that called into :class:`Config` (the claimer of a section)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]
    module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
    return module.split(".")[0]


class PluginSettings(Mapping[str, Any]):
    """One plugin's settings: the sections it claims, the mode, and nothing of any other plugin's.

    The kernel hands each plugin's hook implementations (``bastion_configure``,
    ``bastion_check``, ``bastion_startup``, ``bastion_deploy_checks``,
    ``bastion_storage_driver``) their own ``settings``: a plugin claims its
    sections with :meth:`section` or :meth:`raw_section` (one owner per
    section, checked by the :class:`Config` behind it), reads them back by
    name (``settings["auth"]``), and learns the mode from :attr:`mode`, not by
    reading ``[bastion]``. A section another plugin claimed is not readable
    here (KeyError).
    """

    def __init__(self, config: Config, owner: str):
        self._config = config
        self.owner = owner

    # -- claiming --------------------------------------------------------

    def section(self, name: str, schema: Mapping[str, Option]) -> Settings:
        """Claim the section ``name`` for this plugin with ``schema`` and return its typed values (see Config.section)."""
        return self._config.section(name, schema, owner=self.owner)

    def raw_section(self, name: str, check_key: Callable[[str], None] | None = None) -> dict[str, str]:
        """Claim the free-form section ``name`` for this plugin and return its keys and values."""
        return self._config.raw_section(name, check_key, owner=self.owner)

    def sections_with_prefix(self, prefix: str) -> tuple[str, ...]:
        """The names of the file's sections that start with ``prefix``, in the file's order (see
        Config.sections_with_prefix): a plugin that reads a family of sections (``[auth:alpha.example.com]``)
        lists them here, then claims each with :meth:`section`."""
        return self._config.sections_with_prefix(prefix)

    # -- reading ---------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        claim = self._config._claims.get(name)
        if claim is None or claim.owner != self.owner:
            raise KeyError(f"[{name}] is not a section of {self.owner}")
        return claim.value

    def __iter__(self):
        return (name for name, claim in self._config._claims.items() if claim.owner == self.owner)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def mode(self) -> str:
        """``"development"`` or ``"production"`` (``[bastion] development``)."""
        return "development" if self.development else "production"

    @property
    def development(self) -> bool:
        """Whether development mode is on."""
        return self._config.development

    @property
    def label(self) -> str:
        """The configuration file's path (or ``<defaults>``), to start error messages with."""
        return self._config.label

    def resolve_path(self, value: str) -> Path:
        """Resolve a path read from the file relative to the file's folder."""
        return self._config.resolve_path(value)

    @property
    def storage_urls(self) -> dict[str, str]:
        """The kernel's storage URLs by the ``[bastion]`` key that names them, for storage plugins' checks:
        ``storage``, and ``state`` when it is another URL."""
        settings = self._config.bastion
        urls = {"storage": settings.storage}
        if settings.state and settings.state != settings.storage:
            urls["state"] = settings.state
        return urls

    def __repr__(self) -> str:
        return f"PluginSettings({self.owner!r}, sections={list(self)!r}, mode={self.mode!r})"


class Config:
    """A parsed INI file whose sections are claimed and typed by their readers, one owner per section."""

    def __init__(self, parser: configparser.ConfigParser, path: str | None, environ: Mapping[str, str] | None = None):
        self.parser = parser
        self.path = path
        self.label = path or "<defaults>"
        self.environ = os.environ if environ is None else environ
        self._claims: dict[str, _Claim] = {}
        self._plugin_settings: dict[str, PluginSettings] = {}

    # -- construction -----------------------------------------------------

    @classmethod
    def from_string(cls, text: str, path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
        """Parse INI text; ``path`` is only used in messages and for relative paths."""
        parser = _new_parser()
        try:
            parser.read_string(text, source=path or "<string>")
        except configparser.Error as exc:
            raise ConfigError(f"{path or '<string>'}: {_one_line(exc)}") from None
        return cls(parser, path, environ)

    @classmethod
    def from_dict(cls, sections: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str] | None = None) -> Config:
        """Build a configuration from ``{section: {key: value}}`` (values are stringified)."""
        parser = _new_parser()
        for name, values in sections.items():
            parser.add_section(name)
            for key, value in values.items():
                if isinstance(value, bool):
                    value = "true" if value else "false"
                elif isinstance(value, (list, tuple)):
                    value = ", ".join(str(v) for v in value)
                parser.set(name, key, str(value))
        return cls(parser, None, environ)

    # -- access -----------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The folder relative paths are resolved from: the file's, or the working one."""
        return Path(self.path).resolve().parent if self.path else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        """Resolve a path from the file relative to the file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def for_plugin(self, owner: str) -> PluginSettings:
        """The :class:`PluginSettings` of the plugin whose top-level package is ``owner`` (one object per owner)."""
        settings = self._plugin_settings.get(owner)
        if settings is None:
            settings = self._plugin_settings[owner] = PluginSettings(self, owner)
        return settings

    def has_section(self, name: str) -> bool:
        """Whether the file has the section."""
        return self.parser.has_section(name)

    def sections_with_prefix(self, prefix: str) -> tuple[str, ...]:
        """The names of the file's sections that start with ``prefix`` (a non-empty string), in the file's order.

        Listing claims nothing: the reader of a family of sections claims each
        one it lists (one owner per section still holds), and a section of
        the family nobody claims is still an unknown section at start-up.
        """
        if not prefix:
            raise ValueError("a section prefix is a non-empty string")
        return tuple(name for name in self.parser.sections() if name.startswith(prefix))

    def section(self, name: str, schema: Mapping[str, Option], owner: str | None = None) -> Settings:
        """Claim a section and return its typed values, defaults filled in (read once: later calls get them).

        Each section has one owner: the first to claim it (``owner``, by
        default the top-level package of the caller, e.g.
        ``bastion_storage_sql``). Asking again with the same schema reads the
        same values; another schema for the same section is a second claim, a
        ConfigError naming both owners, so that two plugins can never read one
        section two ways. Raises ConfigError on an unknown key or a bad value.
        """
        claim = self._claims.get(name)
        if claim is not None:
            if claim.schema is schema:
                return claim.value  # type: ignore[return-value]
            raise self._second_claim(name, claim, owner or _caller_package())
        values = {key: option.default for key, option in schema.items()}
        for key, raw in self._items(name):
            option = schema.get(key)
            if option is None:
                known = ", ".join(sorted(schema)) or "none"
                raise ConfigError(f"{self.label}: [{name}] {key}: unknown key; accepted keys: {known}")
            try:
                values[key] = option.parse(raw)
            except (ValueError, TypeError):
                # The value may hold a password (a storage URL, or one expanded from the environment): never shown.
                raise ConfigError(f"{self.label}: [{name}] {key} = {redact(raw)!r}: invalid value; "
                                  f"accepted: {option.accepted}") from None
        settings = Settings(name, values)
        self._claims[name] = _Claim(owner or _caller_package(), schema, settings)
        return settings

    def raw_section(self, name: str, check_key: Callable[[str], None] | None = None,
                    owner: str | None = None) -> dict[str, str]:
        """Claim a free-form section and return its keys and expanded values.

        One owner per section, as for :meth:`section`: a free-form section
        claimed by another package (or claimed with a schema) is a ConfigError
        naming both.
        """
        claim = self._claims.get(name)
        owner = owner or _caller_package()
        if claim is None:
            items = dict(self._items(name))
            if check_key:
                for key in items:
                    try:
                        check_key(key)
                    except ValueError as exc:
                        raise ConfigError(f"{self.label}: [{name}] {key}: {exc}") from None
            claim = self._claims[name] = _Claim(owner, None, items)
        elif claim.schema is not None or claim.owner != owner:
            raise self._second_claim(name, claim, owner)
        return dict(claim.value)

    def owner(self, name: str) -> str | None:
        """Who claimed a section (a package name), or None while nobody has."""
        claim = self._claims.get(name)
        return claim.owner if claim is not None else None

    def _second_claim(self, name: str, claim: _Claim, owner: str) -> ConfigError:
        return ConfigError(f"{self.label}: [{name}]: claimed by {claim.owner} and again by {owner}; a section "
                           "belongs to one plugin")

    def check_unclaimed(self) -> None:
        """Raise ConfigError for a section no kernel part or plugin has read."""
        for name in self.parser.sections():
            if name not in self._claims:
                known = ", ".join(sorted(self._claims))
                raise ConfigError(f"{self.label}: [{name}]: unknown section; no installed plugin reads it (known: {known})")

    def _items(self, name: str):
        if not self.parser.has_section(name):
            return []
        return [(key, self._expand(name, key, raw)) for key, raw in self.parser.items(name, raw=True)]

    def _expand(self, section: str, key: str, raw: str) -> str:
        def replace(match: re.Match) -> str:
            var = match.group(1)
            if var not in self.environ:
                raise ConfigError(f"{self.label}: [{section}] {key}: environment variable {var} is not set")
            return self.environ[var]

        return _ENV_REF.sub(replace, raw)

    # -- the kernel's own sections ---------------------------------------

    @property
    def bastion(self) -> Settings:
        """The typed ``[bastion]`` section."""
        return self.section("bastion", BASTION_SCHEMA, owner="kernel")

    @property
    def server(self) -> Settings:
        """The typed ``[server]`` section."""
        return self.section("server", SERVER_SCHEMA, owner="kernel")

    @property
    def metrics(self) -> Settings:
        """The typed ``[metrics]`` section."""
        return self.section("metrics", METRICS_SCHEMA, owner="kernel")

    @property
    def development(self) -> bool:
        """Whether development mode is on."""
        return self.bastion.development

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """The host patterns served: ``[bastion] allowed_hosts``, else in development mode localhost's."""
        settings = self.bastion
        return tuple(settings.allowed_hosts) or (DEVELOPMENT_HOSTS if settings.development else ())

    def allows_host(self, domain: str) -> bool:
        """Whether requests for ``domain`` (a normalized host name) are served (``allowed_hosts``)."""
        return HostMatcher(self.allowed_hosts).allows(domain)


def _new_parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none", strict=True,
                                       empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # usernames keep their case
    return parser


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration: ``path``, else ``$BASTION_CONFIG``, else ``./bastion.ini``, else defaults."""
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get("BASTION_CONFIG") or None
        if path is None and Path("bastion.ini").is_file():
            path = "bastion.ini"
    if path is None:
        return Config(_new_parser(), None, env)
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    return Config.from_string(text, path, env)


_URL = r"[a-z][a-z0-9+.-]*://.*"

#: The ``[bastion]`` section.
BASTION_SCHEMA: dict[str, Option] = {
    "development": Bool(False, "development mode: plain HTTP allowed, tracebacks in 500 bodies, auto-reload"),
    "storage": Str("mem://", "storage URL of records (and of state unless `state` is set)", _URL,
                   "a URL such as mem:// or sqlite:///var/bastion.sqlite3"),
    "state": Str("", "storage URL of sessions, nonces and counters; empty means the storage URL", f"(|{_URL})",
                 "a URL, or empty"),
    "static": Str("", "a directory served at / before the plugins' static files"),
    "allowed_hosts": List((), "hosts served (`*.example.com` matches every subdomain); "
                          "development defaults to localhost, *.localhost, 127.0.0.1"),
    "trusted_proxies": Networks("peers whose X-Forwarded-For and X-Forwarded-Proto are believed"),
    "max_body": Size(1024 * 1024, "largest request body accepted"),
    "log_level": Choice("info", ("debug", "info", "warning", "error"), "level of the bastion loggers"),
    "log_format": Choice("text", ("text", "json"), "the default log lines: text, or one JSON object per line"),
}

#: The ``[metrics]`` section: who may read ``/metrics``, and ``/healthz`` under any Host.
METRICS_SCHEMA: dict[str, Option] = {
    "allow": Networks("addresses that may read /metrics and /healthz under any Host; empty: nobody, and nothing "
                      "is counted", default=("127.0.0.0/8", "::1")),
}

#: The ``[server]`` section, read by kernel.server.gunicorn_conf (``bastion serve``, and gunicorn with its settings).
SERVER_SCHEMA: dict[str, Option] = {
    "bind": Str("127.0.0.1:9000", "address gunicorn listens on", r"(\S+:\d+|unix:\S+)", "HOST:PORT or unix:PATH"),
    "workers": Int(2, "worker processes (forced to 1 for mem://)", min=1, max=64),
    "threads": Int(4, "threads per worker", min=1, max=256),
    "timeout": Int(30, "seconds before a silent worker is restarted", min=1),
    "graceful_timeout": Int(30, "seconds workers have to finish their requests after a stop or restart signal, "
                            "before they are killed", min=1),
    "keepalive": Int(2, "seconds an idle kept-alive connection stays open for its next request (0: no keep-alive)",
                     min=0, max=3600),
    "max_requests": Int(0, "requests a worker serves before it is replaced by a fresh one (0: never)", min=0),
    "max_requests_jitter": Int(0, "a random 0 to this many requests added to max_requests for each worker, so that "
                               "workers are not replaced all at once", min=0),
    "reload": Choice("auto", ("auto", "on", "off"), "restart workers when code changes; auto: in development mode"),
    "header_timeout": Float(10.0, "seconds a client has to send a request's whole header block, else 408", min=0.1),
    "body_timeout": Float(20.0, "seconds a request's whole body has to arrive once its head has, else 408", min=0.1),
    "worker_connections": Int(1000, "connections each worker holds at once; beyond, a new one closes the oldest idle "
                              "or still-arriving connection", min=1, max=100000),
}

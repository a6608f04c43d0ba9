"""From a URL to a Broker or ResultBackend: the scheme table and the URL grammar.

Lookup order for a scheme: transports registered with `register_transport`, then the
built-in ones, then the `pluq.transports` entry-point group, so a third-party package can
add a scheme by declaring, in its `pyproject.toml`:

    [project.entry-points."pluq.transports"]
    sqs = "pluq_sqs:SqsTransport"

A transport class has `schemes`, `capabilities`, and two class methods,
`broker(url, *, clock)` and `backend(url, *, clock)`, each taking a parsed `URL`. Every
transport honours the `prefix` query option (to isolate tenants and tests) and rejects
options it does not know with a `ConfigurationError`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from pluq.errors import ConfigurationError

if TYPE_CHECKING:
    from pluq.backend import ResultBackend
    from pluq.broker import Broker, Capabilities, Clock

__all__ = [
    "ENTRY_POINT_GROUP",
    "URL",
    "Transport",
    "check_url",
    "known_schemes",
    "open_backend",
    "open_broker",
    "register_transport",
    "shared_between_processes",
    "transport_for",
]

ENTRY_POINT_GROUP = "pluq.transports"

_BUILTIN: Mapping[str, str] = MappingProxyType(
    {
        "memory": "pluq.transports.memory:MemoryTransport",
        "file": "pluq.transports.filesystem:FileTransport",
        "sqlite": "pluq.transports.sqlite:SqliteTransport",
        "redis": "pluq.transports.redis:RedisTransport",
        "rediss": "pluq.transports.redis:RedisTransport",
        "unix": "pluq.transports.redis:RedisTransport",
    }
)
_IN_ONE_PROCESS: frozenset[str] = frozenset({"memory"})
"""The built-in schemes whose queues live inside one process: `capabilities` says the same
(a test checks it), but is known here without importing the transport."""

_registered: dict[str, type[Transport] | str] = {}

T = TypeVar("T")


class Transport(Protocol):
    """What a transport class provides (a built-in one or an entry point's target)."""

    schemes: ClassVar[tuple[str, ...]]
    capabilities: ClassVar[Capabilities]

    @classmethod
    def broker(cls, url: URL, *, clock: Clock) -> Broker: ...

    @classmethod
    def backend(cls, url: URL, *, clock: Clock) -> ResultBackend: ...


@dataclass(frozen=True, slots=True)
class URL:
    """A parsed transport URL: `scheme://[user[:password]@]host[:port]/path?option=value`."""

    raw: str
    scheme: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    path: str = ""
    query: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str) -> URL:
        if not isinstance(raw, str) or "://" not in raw:
            raise ConfigurationError(
                f"{raw!r} is not a transport URL: write it as scheme://..., for example "
                f"sqlite:///pluq.db, memory://, file:///var/spool/pluq or "
                f"redis://localhost:6379/0"
            )
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"{_redact(raw)}: the port is not a number ({exc})") from exc
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in query:
                raise ConfigurationError(f"{_redact(raw)}: option {key!r} is given twice")
            query[key] = value
        return cls(
            raw=raw,
            scheme=parts.scheme.lower(),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname,
            port=port,
            path=unquote(parts.path),
            query=MappingProxyType(query),
        )

    @property
    def redacted(self) -> str:
        """The URL with any password replaced by `***`, for logs and errors."""
        return _redact(self.raw)

    def options(self, spec: Mapping[str, Callable[[str], T] | Any]) -> dict[str, Any]:
        """Read the query options named in `spec` (name -> converter), rejecting others.

        Each converter turns the query string into a value and raises ValueError when it
        cannot; options absent from the query are absent from the result.
        """
        unknown = sorted(set(self.query) - set(spec))
        if unknown:
            known = ", ".join(sorted(spec)) or "none"
            raise ConfigurationError(
                f"{self.redacted}: unknown option(s) {', '.join(unknown)} for {self.scheme}://; "
                f"the options it takes are: {known}"
            )
        values: dict[str, Any] = {}
        for name, value in self.query.items():
            try:
                values[name] = spec[name](value)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    f"{self.redacted}: option {name}={value!r} is not valid ({exc})"
                ) from exc
        return values


def _redact(raw: str) -> str:
    try:
        parts = urlsplit(raw)
    except ValueError:
        return raw
    if parts.password is None:
        return raw
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def register_transport(
    scheme: str, target: type[Transport] | str, *, replace: bool = False
) -> None:
    """Make `scheme://` URLs open with `target` (a class, or "module:Class" to import lazily).

    Raises ConfigurationError if the scheme is registered already, unless `replace`.
    """
    scheme = scheme.lower()
    if scheme in _registered and not replace:
        raise ConfigurationError(
            f"scheme {scheme!r} is already registered; pass replace=True to replace it"
        )
    _registered[scheme] = target


def _load(target: type[Transport] | str, scheme: str) -> type[Transport]:
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// transport needs a module that is not installed ({exc}); "
            f"install the package that provides it"
        ) from exc
    cls: type[Transport] = getattr(module, attr)
    return cls


def _entry_point_targets() -> dict[str, str]:
    # Imported here: importlib.metadata weighs megabytes, and only a scheme that is neither
    # registered nor built in needs it.
    from importlib.metadata import entry_points

    return {ep.name.lower(): ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    """Every scheme that can be opened now: registered, built-in and entry points."""
    return sorted(set(_registered) | set(_BUILTIN) | set(_entry_point_targets()))


def transport_for(url: URL | str) -> type[Transport]:
    """The transport class for a URL's scheme, or a ConfigurationError naming the known ones."""
    parsed = url if isinstance(url, URL) else URL.parse(url)
    scheme = parsed.scheme
    if scheme in _registered:
        return _load(_registered[scheme], scheme)
    if scheme in _BUILTIN:
        return _load(_BUILTIN[scheme], scheme)
    plugin = _entry_point_targets().get(scheme)
    if plugin is not None:
        return _load(plugin, scheme)
    raise ConfigurationError(
        f"unknown transport scheme {scheme!r} in {parsed.redacted}; known schemes: "
        f"{', '.join(known_schemes())}. A third-party transport registers its scheme "
        f"through the {ENTRY_POINT_GROUP!r} entry point group."
    )


def check_url(url: URL | str) -> URL:
    """Parse a URL and check that its scheme can be opened, without importing a built-in one.

    For a built-in scheme (not replaced with `register_transport`) the transport module is
    not imported: a worker's children import the app but never connect, so they need not
    load redis-py. Any other scheme is checked as `transport_for` checks it.

    Raises:
        ConfigurationError: the URL is malformed, or no transport serves its scheme.
    """
    parsed = url if isinstance(url, URL) else URL.parse(url)
    if parsed.scheme in _registered or parsed.scheme not in _BUILTIN:
        transport_for(parsed)
    return parsed


def shared_between_processes(url: URL | str) -> bool:
    """Whether processes meet on the URL's queues (its transport's capabilities say so).

    A built-in scheme (not replaced with `register_transport`) is answered without
    importing its transport: `pluq worker` checks this before it becomes the lean worker
    process, and redis-py takes a tenth of a second to import.
    """
    parsed = check_url(url)
    if parsed.scheme in _BUILTIN and parsed.scheme not in _registered:
        return parsed.scheme not in _IN_ONE_PROCESS
    return transport_for(parsed).capabilities.shared_between_processes


def open_broker(url: str, *, clock: Clock = time.time) -> Broker:
    """Open the Broker a URL names."""
    parsed = URL.parse(url)
    return transport_for(parsed).broker(parsed, clock=clock)


def open_backend(url: str, *, clock: Clock = time.time) -> ResultBackend:
    """Open the ResultBackend a URL names."""
    parsed = URL.parse(url)
    return transport_for(parsed).backend(parsed, clock=clock)

"""Typed, picklable Kafka client configuration with secrets that never reach a log.

One :class:`KafkaConfig` describes how to reach a cluster; readers and writers turn it into the
librdkafka settings dict on the worker (in ``DoFn.setup``), so secrets given as ``env:VAR`` or
``file:/path`` are resolved where the client runs and are never part of ``repr``, logs or the
options Beam displays.

Usage::

    values = validate(options, OPTIONS)            # pipelines.common.options
    config = KafkaConfig.from_options(values)       # checks protocol, SASL and secrets early
    local = config.with_extra(LOCAL_BROKER_SETTINGS)
    producer = confluent_kafka.Producer(local.producer_dict())
    _LOGGER.info("Kafka: %s", local)                # secrets redacted
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "KafkaConfig",
    "KafkaConfigError",
    "Secret",
    "Settings",
    "LOCAL_BROKER_SETTINGS",
    "SECURITY_PROTOCOLS",
    "SASL_MECHANISMS",
    "parse_settings",
    "redact_option_values",
]

_LOGGER = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: Mechanisms that authenticate with a username and password.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_REDACTED = "***"

# librdkafka keys whose values are secrets: redacted when shown, env:/file: references resolved.
_SECRET_KEY = re.compile(r"password|secret|\.pem$|sasl\.oauthbearer\.config|sasl\.jaas")

# Settings only one client kind understands (librdkafka CONFIGURATION.md, column C/P). Passing
# them to the other kind only produces a CONFWARN, but one config serves both, so drop them.
_CONSUMER_ONLY = frozenset(
    {
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "coordinator.query.interval.ms",
        "max.poll.interval.ms",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "enable.auto.offset.store",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "fetch.wait.max.ms",
        "fetch.queue.backoff.ms",
        "fetch.message.max.bytes",
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.error.backoff.ms",
        "isolation.level",
        "enable.partition.eof",
        "check.crcs",
        "auto.offset.reset",
        "consume.callback.max.messages",
    }
)
_PRODUCER_ONLY = frozenset(
    {
        "transactional.id",
        "transaction.timeout.ms",
        "enable.idempotence",
        "enable.gapless.guarantee",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.ms",
        "queue.buffering.backpressure.threshold",
        "linger.ms",
        "message.send.max.retries",
        "retries",
        "compression.codec",
        "compression.type",
        "compression.level",
        "batch.num.messages",
        "batch.size",
        "delivery.report.only.error",
        "sticky.partitioning.linger.ms",
        "request.required.acks",
        "acks",
        "request.timeout.ms",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "partitioner",
    }
)


class KafkaConfigError(ValueError):
    """A Kafka setting is wrong or a secret cannot be resolved; the message names the setting."""


class Secret:
    """A secret given as a literal, ``env:VARIABLE`` or ``file:/path``; resolved only on demand.

    Like pydantic's ``SecretStr`` but lazy: references are kept as written so the config can be
    pickled to workers and shown in logs without the value. ``repr`` shows a reference (the name
    of a variable or file is not secret) and hides a literal.
    """

    __slots__ = ("_spec",)

    def __init__(self, spec: str) -> None:
        if not isinstance(spec, str):
            raise TypeError(f"a secret must be a str, got {type(spec).__name__}")
        self._spec = spec

    @property
    def reference(self) -> str | None:
        """``env:VAR`` / ``file:/path`` as given, or None for a literal secret."""
        return self._spec if self._spec.startswith(("env:", "file:")) else None

    def display(self) -> str:
        """What may be shown: the reference, or ``***`` for a literal."""
        return self.reference or _REDACTED

    def reveal(self) -> str:
        """Resolve the secret. Raises :class:`KafkaConfigError` without echoing the value."""
        if self._spec.startswith("env:"):
            name = self._spec[4:]
            value = os.environ.get(name)
            if value is None:
                raise KafkaConfigError(f"environment variable {name!r} is not set")
        elif self._spec.startswith("file:"):
            path = self._spec[5:]
            try:
                with open(path, encoding="utf-8") as handle:
                    value = handle.read().rstrip("\r\n")
            except OSError as err:
                raise KafkaConfigError(
                    f"cannot read secret file {path!r}: {err.strerror or type(err).__name__}"
                ) from None
        else:
            value = self._spec
        if not value:
            raise KafkaConfigError(f"secret {self.display()} is empty")
        return value

    def __repr__(self) -> str:
        return f"Secret({self.display()!r})"

    __str__ = display

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._spec == self._spec

    def __hash__(self) -> int:
        return hash((Secret, self._spec))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._spec,))


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Settings(Mapping[str, str]):
    """An immutable, hashable, picklable ``{librdkafka key: str value}`` mapping.

    ``repr`` redacts values of secret-looking keys (``*password*``, ``*secret*``, ``*.pem`` …).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {str(k).strip(): _setting_text(v) for k, v in pairs}

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __reduce__(self) -> tuple[Any, ...]:
        return (Settings, (tuple(self._items.items()),))

    def redacted(self) -> dict[str, str]:
        """The settings with secret values replaced by their reference or ``***``."""
        return {
            k: Secret(v).display() if _SECRET_KEY.search(k) else v for k, v in self._items.items()
        }

    def __repr__(self) -> str:
        return f"Settings({self.redacted()!r})"


#: Client settings for the local noida-db broker (it ignores fetch limits and fetch waits, see
#: docs/local_stack.md#kafka-broker-noida-db). Not production defaults: apply with
#: ``config.with_extra(LOCAL_BROKER_SETTINGS)``.
LOCAL_BROKER_SETTINGS = Settings(
    {
        "receive.message.max.bytes": "2147483647",
        "queued.min.messages": "1000",
        "fetch.queue.backoff.ms": "100",
    }
)


def parse_settings(text: str | None, *, flag: str = "--kafkaConfig") -> Settings:
    """Parse ``"k=v;k=v"`` (empty segments ignored; a value may contain ``=`` but not ``;``)."""
    pairs = []
    for segment in (text or "").split(";"):
        if not segment.strip():
            continue
        key, sep, value = segment.partition("=")
        if not sep or not key.strip():
            raise KafkaConfigError(f"{flag}: expected key=value, got {segment.strip()[:40]!r}")
        pairs.append((key.strip(), value.strip()))
    return Settings(pairs)


# Typed field -> librdkafka key. Order is the order of as_librdkafka_dict().
_FIELD_KEYS = {
    "bootstrap_servers": "bootstrap.servers",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
}
_KEY_FIELDS = {key: name for name, key in _FIELD_KEYS.items()}
_SECRET_FIELDS = ("sasl_password", "ssl_key_password")


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    """How to connect to a Kafka cluster. Frozen, hashable, picklable; secrets stay lazy.

    Construction validates the combination (known protocol; SASL PLAIN/SCRAM needs a username and
    a password; SASL/SSL settings only with a protocol that uses them) but reads no environment:
    call :meth:`check_secrets` (``from_options`` does) to fail fast at launch, or let
    :meth:`as_librdkafka_dict` resolve them on the worker.

    Args:
        bootstrap_servers: ``host:port[,host:port…]``.
        security_protocol: one of :data:`SECURITY_PROTOCOLS` (case-insensitive).
        sasl_mechanism: one of :data:`SASL_MECHANISMS`, or another librdkafka mechanism whose
            settings go in ``extra`` (e.g. ``OAUTHBEARER``).
        sasl_username: SASL username.
        sasl_password: a :class:`Secret` or its spec (literal, ``env:VAR``, ``file:/path``).
        ssl_ca_location: CA certificate (PEM) that signs the brokers' certificates.
        ssl_certificate_location: client certificate for mutual TLS.
        ssl_key_location: client private key for mutual TLS.
        ssl_key_password: a :class:`Secret` for the client key.
        extra: further librdkafka settings (values of secret-looking keys may be references too).
    """

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: Secret | None = None
    extra: Mapping[str, str] = dataclasses.field(default_factory=Settings)

    def __post_init__(self) -> None:
        for name in _SECRET_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Secret):
                object.__setattr__(self, name, Secret(value))
        if not isinstance(self.extra, Settings):
            object.__setattr__(self, "extra", Settings(self.extra))
        object.__setattr__(self, "security_protocol", str(self.security_protocol).upper())
        if self.sasl_mechanism is not None:
            object.__setattr__(self, "sasl_mechanism", str(self.sasl_mechanism).upper())
        self._check()

    def _check(self) -> None:
        if not self.bootstrap_servers or not str(self.bootstrap_servers).strip():
            raise KafkaConfigError("bootstrap.servers is required")
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise KafkaConfigError(
                f"security.protocol={protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        for key in self.extra:
            if key in _KEY_FIELDS:
                raise KafkaConfigError(
                    f"extra setting {key} must be given as KafkaConfig.{_KEY_FIELDS[key]}"
                )
        sasl = protocol.startswith("SASL_")
        if not sasl:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is not None:
                    raise KafkaConfigError(
                        f"{_FIELD_KEYS[name]} is set but security.protocol={protocol} does not "
                        "use SASL (use SASL_SSL or SASL_PLAINTEXT)"
                    )
        elif self.sasl_mechanism is None:
            raise KafkaConfigError(
                f"sasl.mechanism is required with security.protocol={protocol} "
                f"({', '.join(SASL_MECHANISMS)})"
            )
        elif self.sasl_mechanism in SASL_MECHANISMS:
            for name in ("sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise KafkaConfigError(
                        f"{_FIELD_KEYS[name]} is required with sasl.mechanism={self.sasl_mechanism}"
                    )
        if not protocol.endswith("SSL"):
            for name in (
                "ssl_ca_location",
                "ssl_certificate_location",
                "ssl_key_location",
                "ssl_key_password",
            ):
                if getattr(self, name) is not None:
                    raise KafkaConfigError(
                        f"{_FIELD_KEYS[name]} is set but security.protocol={protocol} does not "
                        "use TLS (use SSL or SASL_SSL)"
                    )

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_options(cls, values: Mapping[str, Any], *, check_secrets: bool = True) -> KafkaConfig:
        """Build from the camelCase values of ``pipelines.common.options.validate``
        (KAFKA_CONNECTION).

        ``kafkaConfig`` (``"k=v;k=v"``) becomes :attr:`extra`, except the typed settings that
        have no flag of their own (``ssl.certificate.location``, ``ssl.key.location``,
        ``ssl.key.password``), which become fields. With ``check_secrets`` (default) the secrets
        are resolved once and discarded, so a missing variable or file fails at launch; pass
        False when only the workers can see them. Errors name the flag.
        """
        password = values.get("saslPassword")
        if password is not None and Secret(password).reference is None:
            _LOGGER.warning(
                "--saslPassword is given literally, so it is stored in the job's options; "
                "prefer env:VARIABLE or file:/path"
            )
        try:
            extra = dict(parse_settings(values.get("kafkaConfig")))
            for key in extra:
                if key in _KEY_FLAGS:
                    raise KafkaConfigError(f"--kafkaConfig: set {key} with {_KEY_FLAGS[key]}")
            typed = {_KEY_FIELDS[k]: extra.pop(k) for k in list(extra) if k in _KEY_FIELDS}
            config = cls(
                bootstrap_servers=values.get("bootstrapServers") or "",
                security_protocol=values.get("securityProtocol") or "PLAINTEXT",
                sasl_mechanism=values.get("saslMechanism") or None,
                sasl_username=values.get("saslUsername") or None,
                sasl_password=password or None,
                ssl_ca_location=values.get("sslCaLocation") or None,
                extra=extra,
                **typed,
            )
            if check_secrets:
                config.check_secrets()
        except KafkaConfigError as err:
            raise KafkaConfigError(f"invalid Kafka options: {_flagged(str(err))}") from None
        return config

    @classmethod
    def from_librdkafka_dict(cls, settings: Mapping[str, Any]) -> KafkaConfig:
        """Build from a librdkafka settings dict; unknown keys go to :attr:`extra`."""
        fields: dict[str, Any] = {}
        extra = {}
        for key, value in settings.items():
            if key in _KEY_FIELDS:
                fields[_KEY_FIELDS[key]] = _setting_text(value)
            else:
                extra[key] = value
        if "bootstrap_servers" not in fields:
            raise KafkaConfigError("bootstrap.servers is required")
        return cls(**fields, extra=Settings(extra))

    def with_extra(self, settings: Mapping[str, Any] | None = None, /, **more: Any) -> KafkaConfig:
        """A copy with more librdkafka settings (later ones win): ``with_extra({"linger.ms": 5})``
        or ``with_extra(**LOCAL_BROKER_SETTINGS)``."""
        merged = {**self.extra, **Settings(settings or {}), **Settings(more)}
        return dataclasses.replace(self, extra=Settings(merged))

    # ---- use ----------------------------------------------------------------------------------

    def check_secrets(self) -> None:
        """Resolve every secret once (values discarded); raise naming the setting if one fails."""
        for key, secret in self._secrets():
            _reveal(key, secret)

    def as_librdkafka_dict(self) -> dict[str, str]:
        """All settings with secrets resolved. Hand it to a client; never log it."""
        result = self._plain_settings()
        for key, secret in self._secrets():
            result[key] = _reveal(key, secret)
        return result

    def producer_dict(self) -> dict[str, str]:
        """:meth:`as_librdkafka_dict` without consumer-only settings."""
        return {k: v for k, v in self.as_librdkafka_dict().items() if k not in _CONSUMER_ONLY}

    def consumer_dict(self, group_id: str | None = None) -> dict[str, str]:
        """:meth:`as_librdkafka_dict` without producer-only settings, with ``group.id`` if given."""
        result = {k: v for k, v in self.as_librdkafka_dict().items() if k not in _PRODUCER_ONLY}
        if group_id is not None:
            result["group.id"] = group_id
        return result

    def redacted(self) -> dict[str, str]:
        """The settings for logs and display: secrets shown as their reference or ``***``."""
        result = self._plain_settings()
        for key, secret in self._secrets():
            result[key] = secret.display()
        return result

    def __repr__(self) -> str:
        return f"KafkaConfig({self.redacted()!r})"

    __str__ = __repr__

    def _plain_settings(self) -> dict[str, str]:
        result = {}
        for name, key in _FIELD_KEYS.items():
            value = getattr(self, name)
            if value is not None and name not in _SECRET_FIELDS:
                result[key] = value
        result.update((k, v) for k, v in self.extra.items() if not _SECRET_KEY.search(k))
        return result

    def _secrets(self) -> Iterator[tuple[str, Secret]]:
        for name in _SECRET_FIELDS:
            secret = getattr(self, name)
            if secret is not None:
                yield _FIELD_KEYS[name], secret
        for key, value in self.extra.items():
            if _SECRET_KEY.search(key):
                yield key, Secret(value)


def _reveal(key: str, secret: Secret) -> str:
    try:
        return secret.reveal()
    except KafkaConfigError as err:
        raise KafkaConfigError(f"{key}: {err}") from None


# librdkafka key -> flag of pipelines.common.options.KAFKA_CONNECTION, to name flags in launch
# errors.
_KEY_FLAGS = {
    "bootstrap.servers": "--bootstrapServers",
    "security.protocol": "--securityProtocol",
    "sasl.mechanism": "--saslMechanism",
    "sasl.username": "--saslUsername",
    "sasl.password": "--saslPassword",
    "ssl.ca.location": "--sslCaLocation",
}


def _flagged(message: str) -> str:
    """Prefix a KafkaConfigError message with the flag of the setting it starts with."""
    if message.startswith("--"):
        return message
    key = re.match(r"[\w.\-]*", message).group(0)
    flag = _KEY_FLAGS.get(key, "--kafkaConfig" if key not in _KEY_FIELDS else None)
    return f"{flag}: {message}" if flag else message


def redact_option_values(values: Mapping[str, Any], declarations: Iterable[Any]) -> dict[str, Any]:
    """Copy of option ``values`` safe to log or display: literal secrets become ``***``.

    ``declarations`` are ``pipelines.common.options.Option`` objects (anything with ``name`` and
    ``secret``). ``env:``/``file:`` references stay visible, which is why secret options should
    be given that way; secret-looking keys inside ``kafkaConfig`` are redacted too.
    """
    secret_names = {d.name for d in declarations if getattr(d, "secret", False)}
    result = dict(values)
    for name in secret_names:
        if result.get(name) is not None:
            result[name] = Secret(str(result[name])).display()
    if result.get("kafkaConfig"):
        try:
            shown = parse_settings(result["kafkaConfig"]).redacted()
        except KafkaConfigError:
            result["kafkaConfig"] = _REDACTED
        else:
            result["kafkaConfig"] = ";".join(f"{k}={v}" for k, v in shown.items())
    return result

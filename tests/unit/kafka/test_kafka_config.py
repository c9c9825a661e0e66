"""KafkaConfig: option parsing, lazy secrets, redaction, validation, client dicts."""

from __future__ import annotations

import logging
import pickle

import confluent_kafka
import pytest
from apache_beam.transforms.display import DisplayData

from pipelines.common.options import KAFKA_CONNECTION, options_class, validate
from transforms.kafka.config import (
    LOCAL_BROKER_SETTINGS,
    KafkaConfig,
    KafkaConfigError,
    Secret,
    Settings,
    parse_settings,
    redact_option_values,
)

PASSWORD = "s3cr3t-Pa55word"  # must never show up in repr, logs or errors


def _sasl(**overrides):
    fields = dict(
        bootstrap_servers="b1:9093,b2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=PASSWORD,
        ssl_ca_location="/etc/ca.pem",
    )
    fields.update(overrides)
    return KafkaConfig(**fields)


def test_from_options_parses_every_flag_and_kafka_config(monkeypatch):
    monkeypatch.setenv("KBML_TEST_PW", PASSWORD)
    options = options_class("Opts", KAFKA_CONNECTION)(
        [
            "--bootstrapServers=b1:9093,b2:9093",
            "--securityProtocol=SASL_SSL",
            "--saslMechanism=SCRAM-SHA-256",
            "--saslUsername=svc",
            "--saslPassword=env:KBML_TEST_PW",
            "--sslCaLocation=/etc/ca.pem",
            "--kafkaConfig=client.id=scorer;linger.ms=20;x.y=a=b",
        ]
    )
    config = KafkaConfig.from_options(validate(options, KAFKA_CONNECTION))
    assert config.as_librdkafka_dict() == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/ca.pem",
        "client.id": "scorer",
        "linger.ms": "20",
        "x.y": "a=b",
    }
    assert config.sasl_password == Secret("env:KBML_TEST_PW")


def test_mutual_tls_files_come_through_kafka_config(tmp_path):
    (tmp_path / "key-pw").write_text(PASSWORD)
    config = KafkaConfig.from_options(
        {
            "bootstrapServers": "h:1",
            "securityProtocol": "SSL",
            "kafkaConfig": "ssl.certificate.location=/c.pem;ssl.key.location=/k.pem;"
            f"ssl.key.password=file:{tmp_path / 'key-pw'}",
        }
    )
    assert config.ssl_certificate_location == "/c.pem"
    assert config.ssl_key_password == Secret(f"file:{tmp_path / 'key-pw'}")
    assert config.as_librdkafka_dict()["ssl.key.password"] == PASSWORD
    assert PASSWORD not in repr(config)


def test_plaintext_defaults():
    config = KafkaConfig.from_options({"bootstrapServers": "127.0.0.1:9092"})
    assert config.as_librdkafka_dict() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_secret_from_file_strips_trailing_newline(tmp_path):
    path = tmp_path / "pw"
    path.write_text(PASSWORD + "\n")
    config = _sasl(sasl_password=f"file:{path}")
    assert config.as_librdkafka_dict()["sasl.password"] == PASSWORD
    assert f"file:{path}" in repr(config)


def test_secrets_resolve_only_when_the_dict_is_built(monkeypatch):
    monkeypatch.delenv("KBML_LATE_PW", raising=False)
    config = _sasl(sasl_password="env:KBML_LATE_PW")  # no env read at construction
    monkeypatch.setenv("KBML_LATE_PW", PASSWORD)
    assert config.producer_dict()["sasl.password"] == PASSWORD


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"bootstrapServers": "h:1", "securityProtocol": "SASL_TLS"}, "--securityProtocol"),
        (
            {"bootstrapServers": "h:1", "securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN"},
            "--saslUsername: sasl.username is required",
        ),
        (
            {
                "bootstrapServers": "h:1",
                "securityProtocol": "SASL_SSL",
                "saslMechanism": "PLAIN",
                "saslUsername": "u",
            },
            "--saslPassword: sasl.password is required",
        ),
        (
            {"bootstrapServers": "h:1", "securityProtocol": "SASL_SSL"},
            "--saslMechanism: sasl.mechanism is required",
        ),
        ({"bootstrapServers": "h:1", "saslUsername": "u"}, "does not use SASL"),
        ({"bootstrapServers": "h:1", "sslCaLocation": "/ca.pem"}, "does not use TLS"),
        ({"bootstrapServers": ""}, "--bootstrapServers"),
        ({"bootstrapServers": "h:1", "kafkaConfig": "linger.ms"}, "--kafkaConfig: expected"),
        (
            {"bootstrapServers": "h:1", "kafkaConfig": "sasl.password=x"},
            "--kafkaConfig: set sasl.password with --saslPassword",
        ),
    ],
)
def test_bad_combinations_name_the_flag(values, expected):
    with pytest.raises(KafkaConfigError, match=expected):
        KafkaConfig.from_options(values)


def test_missing_env_var_and_file_fail_at_launch_without_the_secret(monkeypatch, tmp_path):
    monkeypatch.delenv("KBML_MISSING", raising=False)
    base = {
        "bootstrapServers": "h:1",
        "securityProtocol": "SASL_SSL",
        "saslMechanism": "PLAIN",
        "saslUsername": "u",
    }
    with pytest.raises(KafkaConfigError, match="--saslPassword.*'KBML_MISSING' is not set"):
        KafkaConfig.from_options({**base, "saslPassword": "env:KBML_MISSING"})
    missing = tmp_path / "nope"
    with pytest.raises(KafkaConfigError, match="--saslPassword.*cannot read secret file"):
        KafkaConfig.from_options({**base, "saslPassword": f"file:{missing}"})
    # Deferred to the workers when asked: the error then names the librdkafka key.
    config = KafkaConfig.from_options(
        {**base, "saslPassword": "env:KBML_MISSING"}, check_secrets=False
    )
    with pytest.raises(KafkaConfigError, match="sasl.password: environment variable"):
        config.as_librdkafka_dict()
    monkeypatch.setenv("KBML_MISSING", "")
    with pytest.raises(KafkaConfigError, match="is empty"):
        config.check_secrets()


def test_repr_str_and_logs_never_show_a_literal_password(caplog):
    config = _sasl(ssl_key_password="k3y-" + PASSWORD, extra={"ssl.keystore.password": PASSWORD})
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("config %s %r %s", config, config, config.redacted())
    shown = repr(config) + str(config) + str(config.redacted()) + caplog.text
    assert PASSWORD not in shown
    assert "'sasl.password': '***'" in repr(config)
    assert "'ssl.keystore.password': '***'" in repr(config)
    assert repr(config.sasl_password) == "Secret('***')"
    assert PASSWORD not in repr(config.extra)


def test_literal_password_option_warns_without_the_value(caplog):
    caplog.set_level(logging.WARNING, logger="transforms.kafka.config")
    KafkaConfig.from_options(
        {
            "bootstrapServers": "h:1",
            "securityProtocol": "SASL_PLAINTEXT",
            "saslMechanism": "PLAIN",
            "saslUsername": "u",
            "saslPassword": PASSWORD,
        }
    )
    assert "--saslPassword is given literally" in caplog.text
    assert PASSWORD not in caplog.text


def test_redact_option_values_for_display():
    values = {
        "bootstrapServers": "h:1",
        "saslPassword": PASSWORD,
        "kafkaConfig": f"client.id=a;ssl.key.password={PASSWORD};x=1",
    }
    shown = redact_option_values(values, KAFKA_CONNECTION)
    assert shown == {
        "bootstrapServers": "h:1",
        "saslPassword": "***",
        "kafkaConfig": "client.id=a;ssl.key.password=***;x=1",
    }
    assert redact_option_values({"saslPassword": "env:PW"}, KAFKA_CONNECTION) == {
        "saslPassword": "env:PW"
    }


def test_displayed_pipeline_options_hide_literal_secrets():
    """Runners show ``display_data`` (Dataflow's options panel); options_class redacts it."""
    options = options_class("Shown", KAFKA_CONNECTION)(
        [
            "--bootstrapServers=h:1",
            f"--saslPassword={PASSWORD}",
            f"--kafkaConfig=client.id=a;ssl.keystore.password={PASSWORD}",
        ]
    )
    items = {i.key: i.value for i in DisplayData.create_from_options(options).items}
    assert items["saslPassword"] == "***"
    assert items["kafkaConfig"] == "client.id=a;ssl.keystore.password=***"
    assert PASSWORD not in repr(items)


def test_librdkafka_dict_round_trip_and_client_split():
    settings = {
        "bootstrap.servers": "h:1",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "plain",
        "sasl.username": "u",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/ca.pem",
        "linger.ms": 5,
        "enable.partition.eof": False,
        "group.id": "ignored-by-producers",
    }
    config = KafkaConfig.from_librdkafka_dict(settings)
    assert config.security_protocol == "SASL_SSL" and config.sasl_mechanism == "PLAIN"
    assert KafkaConfig.from_librdkafka_dict(config.as_librdkafka_dict()) == config
    producer = config.producer_dict()
    consumer = config.consumer_dict(group_id="g2")
    assert "group.id" not in producer and "enable.partition.eof" not in producer
    assert producer["linger.ms"] == "5"
    assert consumer["group.id"] == "g2" and "linger.ms" not in consumer
    assert consumer["enable.partition.eof"] == "false"


def test_with_extra_merges_mapping_and_keywords_later_wins():
    base = KafkaConfig("h:1", extra={"linger.ms": "1", "client.id": "a"})
    merged = base.with_extra({"linger.ms": 7}, **LOCAL_BROKER_SETTINGS, **{"client.id": "b"})
    assert dict(merged.extra) == {
        "linger.ms": "7",
        "client.id": "b",
        "receive.message.max.bytes": "2147483647",
        "queued.min.messages": "1000",
        "fetch.queue.backoff.ms": "100",
    }
    assert dict(base.extra) == {"linger.ms": "1", "client.id": "a"}  # frozen, copied
    assert base.with_extra(LOCAL_BROKER_SETTINGS) == KafkaConfig("h:1").with_extra(
        {"linger.ms": "1", "client.id": "a", **LOCAL_BROKER_SETTINGS}
    )


def test_pickle_hash_and_equality():
    config = _sasl(extra={"linger.ms": "5"})
    clone = pickle.loads(pickle.dumps(config))
    assert clone == config and hash(clone) == hash(config)
    assert {config: 1}[clone] == 1
    assert clone != _sasl(extra={"linger.ms": "6"})
    with pytest.raises(AttributeError):
        config.bootstrap_servers = "other:1"


def test_parse_settings():
    assert parse_settings(None) == Settings()
    assert dict(parse_settings(" a = 1 ;b=;c=x=y;")) == {"a": "1", "b": "", "c": "x=y"}
    with pytest.raises(KafkaConfigError, match="--kafkaConfig: expected key=value"):
        parse_settings("=1")


def test_clients_accept_the_dicts_without_config_warnings():
    """librdkafka itself checks our settings and our consumer/producer split."""
    config = KafkaConfig("127.0.0.1:1").with_extra(
        LOCAL_BROKER_SETTINGS, **{"linger.ms": "5", "auto.offset.reset": "earliest"}
    )
    records = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("kbml.test.librdkafka")
    logger.addHandler(_Collect())
    logger.propagate = False
    producer = confluent_kafka.Producer({**config.producer_dict(), "logger": logger})
    consumer = confluent_kafka.Consumer({**config.consumer_dict("g"), "logger": logger})
    producer.poll(0.1)
    consumer.poll(0.1)
    consumer.close()
    assert not [m for m in records if "CONFWARN" in m], records

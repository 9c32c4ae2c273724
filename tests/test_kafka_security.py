"""Kafka security settings: one place (streams.config.KafkaSecurity) configures every client; the
server's Settings and the client's Profile read the same variables; a bad value names itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from api.settings import Settings, SettingsError
from client.profile import Profile
from infra.errors import PlatformError
from streams.config import Broker, KafkaSecurity, SecurityError, consumer_config, producer_config
from streams.topics import TopicAdmin


def test_plaintext_is_the_default_and_adds_nothing_but_the_protocol() -> None:
    """With no variable set, clients connect in plain text, as to the embedded broker."""
    assert KafkaSecurity.from_mapping({}).config() == {"security.protocol": "PLAINTEXT"}


def self_signed_ca(path: Path) -> Path:
    """A real CA certificate (librdkafka parses the file when a client is made)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "musketeer test CA")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_sasl_ssl_settings_reach_every_client_config(tmp_path: Path) -> None:
    """SASL_SSL with SCRAM and a CA file ends up in producer, consumer and admin configs alike,
    and librdkafka accepts them (it checks the CA file and the mechanism as a client is made)."""
    ca = self_signed_ca(tmp_path / "ca.pem")
    security = KafkaSecurity.from_mapping({
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "john", "KAFKA_SASL_PASSWORD": "s3cret", "KAFKA_SSL_CA_LOCATION": str(ca)})
    broker = Broker("kafka.example.org:9093", security)
    expected = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "john", "sasl.password": "s3cret", "ssl.ca.location": str(ca)}
    for config in (producer_config(broker), consumer_config(broker), broker.config()):
        assert {k: config[k] for k in expected} == expected
    assert TopicAdmin(broker).broker == broker
    Producer(producer_config(broker)).flush(0)
    Consumer(consumer_config(broker)).close()
    assert "s3cret" not in repr(security), "the password must not show in a repr (logs, tracebacks)"


@pytest.mark.parametrize("values, words", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is invalid"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "KAFKA_SASL_MECHANISM=None is invalid"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN"},
     "KAFKA_SASL_USERNAME must be set"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "GSSAPI",
      "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM='GSSAPI'"),
    ({"KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"},
     "KAFKA_SSL_CA_LOCATION='/no/such/ca.pem' is invalid: no such file"),
])
def test_a_bad_setting_is_refused_naming_its_variable(values: dict[str, str], words: str) -> None:
    """Each inconsistency is caught before any client is made, with the variable's name."""
    with pytest.raises(SecurityError) as refused:
        KafkaSecurity.from_mapping(values)
    assert words in str(refused.value)


def test_the_server_and_the_client_read_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings fails at start naming the variable; the daemons' Profile passes the same ones on."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    assert Settings.from_env().broker.config()["sasl.username"] == "alice"
    assert KafkaSecurity.from_mapping(Profile.kafka_settings()) == Settings.from_env().kafka_security
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "bogus")
    with pytest.raises(SettingsError, match="KAFKA_SECURITY_PROTOCOL='BOGUS' is invalid"):
        Settings.from_env()


@pytest.mark.integration
def test_an_api_with_a_bad_security_setting_stops_at_start_naming_it(database_url: str, broker: Any,
                                                                     tmp_path: Path, topic_prefix: str) -> None:
    """The API process refuses to start, and its log names the variable."""
    from tests.conftest import start_api

    with pytest.raises(PlatformError, match="exited during start-up") as failed:
        start_api(database_url, broker.bootstrap, tmp_path, topic_prefix, KAFKA_SECURITY_PROTOCOL="TLS")
    assert "KAFKA_SECURITY_PROTOCOL" in str(failed.value) or any(
        "KAFKA_SECURITY_PROTOCOL" in p.read_text() for p in tmp_path.rglob("*.log"))

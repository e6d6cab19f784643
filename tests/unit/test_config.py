"""The server's configuration: precedence, unknown keys, refusing plaintext off loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from foedus.server.config import SECONDS_FIELDS, ConfigError, load_config


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    file = tmp_path / "foedus.toml"
    file.write_text('[server]\nlisten = "127.0.0.1:7000"\nstore_threads = 3\nlatency_runs = 9\n')
    env = {"FOEDUS_LISTEN": "127.0.0.1:7001", "FOEDUS_STORE_THREADS": "4"}
    cfg = load_config(file, env=env, listen="127.0.0.1:7002")
    assert cfg.listen == "127.0.0.1:7002"
    assert cfg.store_threads == 4
    assert cfg.latency_runs == 9
    assert cfg.database_url().startswith("sqlite:///")


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    file = tmp_path / "foedus.toml"
    file.write_text('[server]\nlisten_addr = "127.0.0.1:7000"\n')
    with pytest.raises(ConfigError, match="listen_addr"):
        load_config(file, env={})
    with pytest.raises(ConfigError, match="bogus"):
        load_config(env={}, bogus=1)


def test_bad_values_say_which_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store_threads"):
        load_config(env={"FOEDUS_STORE_THREADS": "many"})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(env={}, listen="nowhere")
    with pytest.raises(ConfigError, match="tenant_requests_per_s"):
        load_config(env={"FOEDUS_TENANT_REQUESTS_PER_S": "-1"})
    with pytest.raises(ConfigError, match="tenant_burst"):
        load_config(env={}, tenant_burst=-2)
    assert load_config(env={"FOEDUS_TENANT_REQUESTS_PER_S": "50"}).tenant_requests_per_s == 50.0
    assert "member_heartbeat_s" in SECONDS_FIELDS
    for name in SECONDS_FIELDS:
        for bad in ("0", "-5", "nan", "inf"):
            with pytest.raises(ConfigError, match=name):
                load_config(env={f"FOEDUS_{name.upper()}": bad})
    assert load_config(env={"FOEDUS_ALERT_QUIET_S": "30"}).alert_quiet_s == 30.0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="label_retention_days"):
            load_config(env={"FOEDUS_LABEL_RETENTION_DAYS": bad})
    assert load_config(env={}).label_retention_days == 30.0
    assert load_config(env={"FOEDUS_LABEL_RETENTION_DAYS": "0"}).label_retention_days == 0.0


def test_plaintext_only_on_loopback_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="plaintext"):
        load_config(env={}, listen="0.0.0.0:50051")
    assert load_config(env={}, listen="0.0.0.0:50051", allow_insecure=True).allow_insecure
    assert load_config(env={}, listen="[::1]:50051").listen == "[::1]:50051"
    with pytest.raises(ConfigError, match="together"):
        load_config(env={}, tls_cert="cert.pem")

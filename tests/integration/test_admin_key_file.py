"""A platform admin key made offline (`foedus server admin-key`) and given with `admin_key_file`."""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from testkit import run_cli

from foedus.client_sdk.apikeys import check_key
from foedus.client_sdk.cli import exit_codes
from foedus.client_sdk.errors import Unauthenticated
from foedus.client_sdk.testing import LocalServer
from foedus.server.config import ConfigError
from foedus.server.store.records import Role


def make_key(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[str, str]:
    """Writes a key with the CLI; returns (key, what the CLI printed)."""
    code, out, err = run_cli(capsys, "server", "admin-key", "--out", str(path))
    assert code == 0, err
    return path.read_text().strip(), out


def test_the_provided_key_is_the_admin_and_stays_the_only_one(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    make_server: Callable[..., LocalServer],
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "admin.key"
    key, printed = make_key(capsys, key_file)
    key_id = key.split("_")[1]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_id in printed and key not in printed
    code, _, err = run_cli(capsys, "server", "admin-key", "--out", str(key_file))
    assert code == exit_codes.CONFLICT and "--force" in err
    assert key_file.read_text().strip() == key

    # one server, or (--replicas) two replicas given the same file, as from one mounted secret
    server = make_server(tmp_path / "data", admin_key_file=str(key_file), latency_runs=1)
    assert server.admin_key == key
    with server.client() as admin:
        assert admin.whoami().key_id == key_id
        admin.tenants.create("acme")
    assert server.store.count_keys(int(Role.ADMIN)) == 1
    server.halt()
    server.start()  # a second start (or another replica) registers nothing more
    assert server.store.count_keys(int(Role.ADMIN)) == 1
    with server.client() as admin:
        assert admin.whoami().key_id == key_id
    server.halt()
    assert not list((tmp_path / "data").rglob("admin.key"))  # nothing generated
    assert key_file.read_text().strip() == key  # the input file is left alone
    assert key not in caplog.text and check_key(key)[1] not in caplog.text


def test_a_key_that_is_not_the_registered_admin_key_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    with LocalServer(data, latency_runs=1) as server:  # the first start generates the admin key
        generated = server.admin_key
    late, _ = make_key(capsys, tmp_path / "late.key")
    caplog.set_level(logging.DEBUG)
    server = LocalServer(data, admin_key_file=str(tmp_path / "late.key"), latency_runs=1)
    with server:
        assert server.store.count_keys(int(Role.ADMIN)) == 1
        with server.client(generated) as admin:
            assert admin.whoami().key_id == generated.split("_")[1]
        with server.client(late) as stranger, pytest.raises(Unauthenticated):
            stranger.whoami()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(late.split("_")[1] in w and "not a live platform admin key" in w for w in warnings)
    assert check_key(late)[1] not in caplog.text
    assert (data / "admin.key").read_text().strip() == generated


@pytest.mark.parametrize(
    "content",
    ["", "fds_short_x\n", "fds_abcdefghijkl_" + "s" * 20 + "\n", "fds_ABCDEFGHIJKL_" + "s" * 43, "a\nb\n"],
    ids=["empty", "short", "weak-secret", "bad-id", "two-lines"],
)
def test_a_malformed_key_file_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text(content)
    with pytest.raises(ConfigError, match=r"admin_key_file .*not a well-formed API key") as exc:
        LocalServer(tmp_path / "data", admin_key_file=str(key_file)).start()
    assert content.strip() == "" or content.strip() not in str(exc.value)
    assert not (tmp_path / "data" / "foedus.db").exists()

    code, _, err = run_cli(capsys, "server", "start", "--data-dir", str(tmp_path / "d2"),
                           "--admin-key-file", str(key_file))  # fmt: skip
    assert code == exit_codes.USAGE
    assert err.startswith("error: admin_key_file") and "Traceback" not in err


def test_a_missing_key_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="admin_key_file: cannot read"):
        LocalServer(tmp_path / "data", admin_key_file=str(tmp_path / "absent.key")).start()

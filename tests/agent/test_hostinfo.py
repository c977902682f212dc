"""Host identity without a host: every source is injected through HostSources."""

from __future__ import annotations

import hashlib
import hmac
import platform
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_settings
from agent.errors import ConfigError
from agent.hostinfo import PROCFLEET_APP_ID, HostSources, app_specific_id, collect_host, os_type_of
from agent.rows import Host

MACHINE_ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"
# `systemd-id128 machine-id --app-specific=d31ba582fdf34595bf026201677e4bef` on a host whose
# /etc/machine-id is MACHINE_ID.
HASHED_MACHINE_ID = "d5285ca9c53d4f69be607a9754ae5acc"
MAC_UUID = "564D7A1E-23C4-4B7E-9F0A-2C1B1E6F8D77"
WIN_GUID = "6a1f4c2e-9b3d-4e5f-8a7b-1c2d3e4f5a6b"
IOREG_OUTPUT = f"""+-o J314sAP  <class IOPlatformExpertDevice, id 0x100000220, registered>
    {{
      "IOPlatformSerialNumber" = "C02XXXXXXX"
      "IOPlatformUUID" = "{MAC_UUID}"
      "model" = <"MacBookPro18,3">
    }}
"""


@dataclass
class FakePlatform:
    system_name: str = "Linux"
    release_name: str = "6.1.0-18-amd64"
    version_name: str = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1"
    mac_version: str = ""

    def system(self) -> str:
        return self.system_name

    def release(self) -> str:
        return self.release_name

    def version(self) -> str:
        return self.version_name

    def mac_ver(self) -> tuple[str, tuple[str, str, str], str]:
        return (self.mac_version, ("", "", ""), "")


def must_not_be_called(*_args):
    raise AssertionError("this source must not be consulted on this OS")


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    (tmp_path / "machine-id").write_text(MACHINE_ID + "\n")
    (tmp_path / "boot_id").write_text("19daef96-256b-49ec-a370-e85c3296995c\n")
    (tmp_path / "os-release").write_text(
        'NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
    )
    return tmp_path


def sources(etc: Path, **overrides) -> HostSources:
    values = {
        "machine_id_paths": (etc / "machine-id", etc / "dbus-machine-id"),
        "boot_id_path": etc / "boot_id",
        "os_release_paths": (etc / "os-release",),
        "platform": FakePlatform(),
        "hostname": lambda: "web-1.example.com",
        "run_command": must_not_be_called,
        "read_machine_guid": must_not_be_called,
    }
    values.update(overrides)
    return HostSources(**values)


def test_linux_host_reads_machine_id_boot_id_and_os_release(etc):
    host = collect_host(server_id=None, agent_version="0.1.0", sources=sources(etc))
    assert host == Host(
        server_id=HASHED_MACHINE_ID,
        hostname="web-1.example.com",
        os_type="linux",
        os_version="Debian GNU/Linux 12 (bookworm) (kernel 6.1.0-18-amd64)",
        boot_id="19daef96-256b-49ec-a370-e85c3296995c",
        agent_version="0.1.0",
    )


def test_configured_server_id_wins_over_the_machine_id(etc):
    host = collect_host(server_id="db-7.eu:prod", agent_version="0.1.0", sources=sources(etc))
    assert host.server_id == "db-7.eu:prod"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "a/b", "naïve", "trailing-newline\n"])
def test_an_invalid_configured_server_id_is_a_config_error_naming_it(etc, bad):
    with pytest.raises(ConfigError) as info:
        collect_host(server_id=bad, agent_version="0.1.0", sources=sources(etc))
    assert info.value.key == "server_id"
    assert info.value.value == bad


@pytest.mark.parametrize("first", ["", "uninitialized\n", "not an id!\n"])
def test_an_empty_or_unusable_machine_id_falls_through_to_the_dbus_copy(etc, first):
    (etc / "machine-id").write_text(first)
    (etc / "dbus-machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    host = collect_host(server_id=None, agent_version="0.1.0", sources=sources(etc))
    assert host.server_id == app_specific_id("0123456789abcdef0123456789abcdef")


def test_macos_uses_ioreg_platform_uuid_and_has_no_boot_id(etc):
    calls = []

    def run(argv):
        calls.append(list(argv))
        return IOREG_OUTPUT

    src = sources(
        etc,
        machine_id_paths=(etc / "missing",),
        platform=FakePlatform(system_name="Darwin", release_name="23.5.0", mac_version="14.5"),
        run_command=run,
    )
    host = collect_host(server_id=None, agent_version="0.1.0", sources=src)
    assert (host.server_id, host.os_type, host.os_version) == (
        app_specific_id(MAC_UUID), "darwin", "macOS 14.5")
    assert host.boot_id is None
    assert calls == [["ioreg", "-rd1", "-c", "IOPlatformExpertDevice"]]


def test_windows_uses_the_registry_machine_guid(etc):
    src = sources(
        etc,
        machine_id_paths=(etc / "missing",),
        platform=FakePlatform(system_name="Windows", release_name="10", version_name="10.0.19045"),
        read_machine_guid=lambda: WIN_GUID,
    )
    host = collect_host(server_id=None, agent_version="0.1.0", sources=src)
    assert (host.server_id, host.os_type) == (app_specific_id(WIN_GUID), "windows")
    assert host.os_version == "Windows 10 10.0.19045"
    assert host.boot_id is None


def test_without_any_machine_id_a_generated_id_is_persisted_and_reused(etc, tmp_path):
    state = tmp_path / "state" / "server-id"
    src = sources(
        etc,
        machine_id_paths=(etc / "missing",),
        platform=FakePlatform(system_name="FreeBSD", release_name="14.0-RELEASE"),
    )
    first = collect_host(server_id=None, agent_version="0.1.0", state_file=state, sources=src)
    second = collect_host(server_id=None, agent_version="0.1.0", state_file=state, sources=src)
    assert first.server_id == second.server_id == state.read_text().strip()
    assert len(first.server_id) == 32
    assert (first.os_type, first.os_version) == ("freebsd", "14.0-RELEASE")
    assert [p.name for p in state.parent.iterdir()] == ["server-id"]  # no temp file left


def test_failing_ioreg_falls_back_to_the_state_file(etc, tmp_path):
    state = tmp_path / "server-id"
    state.write_text("kept-id-42\n")
    src = sources(
        etc,
        machine_id_paths=(),
        platform=FakePlatform(system_name="Darwin", mac_version="14.5"),
        run_command=lambda argv: "",
    )
    host = collect_host(server_id=None, agent_version="0.1.0", state_file=state, sources=src)
    assert host.server_id == "kept-id-42"


def test_without_any_id_source_or_state_file_asks_for_server_id(etc):
    src = sources(etc, machine_id_paths=(etc / "missing",))
    with pytest.raises(ConfigError, match="set server_id"):
        collect_host(server_id=None, agent_version="0.1.0", sources=src)


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("Linux", "linux"),
        ("Darwin", "darwin"),
        ("Windows", "windows"),
        ("CYGWIN_NT-10.0-19045", "windows"),
        ("MSYS_NT-10.0", "windows"),
        ("FreeBSD", "freebsd"),
        ("OpenBSD", "openbsd"),
        ("NetBSD", "netbsd"),
        ("SunOS", "other"),
        ("AIX", "other"),
        ("", "other"),
    ],
)
def test_os_type_maps_platform_system_to_the_contract(system, expected):
    assert os_type_of(system) == expected


def test_free_form_values_are_cleaned_and_cut_to_the_contract_bounds(etc):
    (etc / "os-release").write_text('PRETTY_NAME="' + "Distro " * 40 + '"\n')
    (etc / "boot_id").write_text("b" * 100 + "\n")
    src = sources(etc, hostname=lambda: "host\x07name" + "x" * 300)
    host = collect_host(server_id=None, agent_version="0.1.0", sources=src)
    assert host.hostname.startswith("host name")
    assert len(host.hostname) == 253
    assert len(host.os_version) == 128
    assert host.boot_id == "b" * 64


def test_an_empty_hostname_is_a_config_error(etc):
    with pytest.raises(ConfigError) as info:
        collect_host(
            server_id=None, agent_version="0.1.0", sources=sources(etc, hostname=lambda: " ")
        )
    assert info.value.key == "hostname"


def test_an_overlong_agent_version_is_a_config_error(etc):
    with pytest.raises(ConfigError) as info:
        collect_host(server_id=None, agent_version="1" * 33, sources=sources(etc))
    assert info.value.key == "agent_version"


def test_missing_boot_id_and_os_release_still_give_a_host(etc):
    src = sources(etc, boot_id_path=etc / "missing", os_release_paths=(etc / "missing",))
    host = collect_host(server_id=None, agent_version="0.1.0", sources=src)
    assert (host.boot_id, host.os_version) == (None, "6.1.0-18-amd64")


def test_this_machine(tmp_path):
    """The real sources: the id is the machine-id where the OS has one, else the state file."""
    state = tmp_path / "server-id"
    host = collect_host(server_id=None, agent_version="0.1.0", state_file=state)
    machine_id = None
    for path in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        if path.exists() and path.read_text().strip() not in ("", "uninitialized"):
            machine_id = path.read_text().strip()
            break
    if platform.system() == "Linux" and machine_id is not None:
        assert host.server_id == app_specific_id(machine_id)
        assert not state.exists()
    else:
        assert host.server_id == state.read_text().strip()
    assert host.hostname == socket.gethostname()[:253]
    assert host.os_type == os_type_of(platform.system())
    if host.os_type == "linux":
        assert host.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_machine_id_is_hashed_like_sd_id128_get_machine_app_specific():
    # systemd's algorithm, spelled out: HMAC-SHA256 keyed by the 16 id bytes over the app id,
    # the first 16 bytes made a version-4 UUID.
    digest = hmac.new(bytes.fromhex(MACHINE_ID), PROCFLEET_APP_ID.bytes, hashlib.sha256).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    assert app_specific_id(MACHINE_ID) == raw.hex() == HASHED_MACHINE_ID
    assert len(HASHED_MACHINE_ID) == 32 and MACHINE_ID not in HASHED_MACHINE_ID
    assert Host(server_id=HASHED_MACHINE_ID, hostname="h", os_type="linux")  # the contract's id
    # dashes, braces and case do not change a 128-bit id
    assert app_specific_id(str(uuid.UUID(MACHINE_ID)).upper()) == HASHED_MACHINE_ID
    assert app_specific_id("{" + str(uuid.UUID(MACHINE_ID)) + "}") == HASHED_MACHINE_ID


def test_the_hash_agrees_with_systemd_id128_on_this_host(tmp_path):
    tool = shutil.which("systemd-id128")
    machine_id = Path("/etc/machine-id")
    if tool is None or not machine_id.exists() or not machine_id.read_text().strip():
        pytest.skip("no systemd-id128 or no /etc/machine-id on this host (not a systemd host)")
    expected = subprocess.run(
        [tool, "machine-id", f"--app-specific={PROCFLEET_APP_ID.hex}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    host = collect_host(server_id=None, agent_version="0.1.0", state_file=tmp_path / "id")
    assert host.server_id == expected != machine_id.read_text().strip()


def test_machine_id_raw_keeps_the_old_ids(etc):
    host = collect_host(server_id=None, agent_version="0.1.0", sources=sources(etc),
                        server_id_source="machine-id-raw")
    assert host.server_id == MACHINE_ID


def test_configured_and_generated_ids_are_not_hashed(etc, tmp_path):
    src = sources(etc, machine_id_paths=(etc / "missing",))
    state = tmp_path / "server-id"
    generated = collect_host(server_id=None, agent_version="0.1.0", state_file=state, sources=src)
    assert generated.server_id == state.read_text().strip()
    configured = collect_host(server_id="db-7", agent_version="0.1.0", sources=sources(etc))
    assert configured.server_id == "db-7"


def test_server_id_source_setting_is_validated_and_read_from_the_environment(tmp_path):
    assert load_settings(None, {}).server_id_source == "machine-id"
    env = {"PROCFLEET_SERVER_ID_SOURCE": "machine-id-raw"}
    assert load_settings(None, env).server_id_source == "machine-id-raw"
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"PROCFLEET_SERVER_ID_SOURCE": "mac-address"})
    assert (info.value.key, info.value.value) == ("PROCFLEET_SERVER_ID_SOURCE", "mac-address")

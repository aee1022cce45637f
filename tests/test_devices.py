"""Device selection: the right backend, or an immediate error that says what to do."""
import pytest

from octavo.backend import CONTRACT_VERSION, Availability, Backend, ConfigError, version_mismatch
from octavo.cli import main
from octavo.devices import KNOWN_DEVICES, installed_backends, list_devices, select_backend


def test_cpu_is_listed_usable_and_auto_picks_an_available_backend():
    infos = {i.name: i for i in list_devices()}
    assert infos["cpu"].availability.ok
    assert select_backend("auto").availability().ok


@pytest.mark.parametrize("device", KNOWN_DEVICES)
def test_missing_package_fails_naming_the_install(monkeypatch, device):
    monkeypatch.setattr("octavo.devices.installed_backends", lambda: {})
    with pytest.raises(ConfigError, match=rf"not installed: pip install -e backends/{device} "):
        select_backend(device)


def test_unknown_device_is_rejected():
    with pytest.raises(ConfigError, match="unknown device 'quantum'"):
        select_backend("quantum")


def fake_backend(version: str = CONTRACT_VERSION, available: bool = True, auto: bool = True) -> type[Backend]:
    class Fake(Backend):
        name = "fake"
        contract_version = version
        priority = 1000

        @classmethod
        def availability(cls):
            return Availability(available, "emulated" if available else "no fake-chip driver loaded", auto)

        def create_worker(self, config):
            raise AssertionError("must not be reached")

    return Fake


def test_unavailable_backend_reports_its_reason(monkeypatch):
    monkeypatch.setattr("octavo.devices.installed_backends", lambda: {"fake": fake_backend(available=False)})
    with pytest.raises(ConfigError, match="unusable: no fake-chip driver loaded"):
        select_backend("fake")


def test_a_backend_usable_by_name_only_is_never_picked_by_auto(monkeypatch, capsys):
    """A testing mode (the TPU backend on XLA's CPU client) runs when named, not by default."""
    installed = {"cpu": installed_backends()["cpu"], "fake": fake_backend(auto=False)}
    monkeypatch.setattr("octavo.devices.installed_backends", lambda: installed)
    assert select_backend("auto").name == "cpu"
    assert select_backend("fake").name == "fake"
    assert main(["devices"]) == 0
    assert "fake       usable by name only (--device fake): emulated" in capsys.readouterr().out.splitlines()


def test_contract_version_rule():
    """Same major, minor no newer than the core's: a minor only adds."""
    major, minor = map(int, CONTRACT_VERSION.split("."))
    assert version_mismatch(CONTRACT_VERSION) is None
    assert version_mismatch(f"{major}.0") is None
    assert "this octavo speaks" in version_mismatch(f"{major}.{minor + 1}")
    assert "this octavo speaks" in version_mismatch(f"{major + 1}.0")
    assert "this octavo speaks" in version_mismatch(f"{major - 1}.{minor}")
    assert "not MAJOR.MINOR" in version_mismatch("3")


@pytest.mark.parametrize("version", ["3.0", "4.99", "four"])
def test_backend_of_another_contract_is_listed_with_the_reason(monkeypatch, version):
    monkeypatch.setattr("octavo.devices.installed_backends", lambda: {"fake": fake_backend(version)})
    info = {i.name: i for i in list_devices()}["fake"]
    assert not info.availability.ok and version in info.availability.reason
    with pytest.raises(ConfigError, match="unusable"):
        select_backend("fake")


def test_octavo_devices_command(capsys):
    assert main(["devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["cpu", "usable"] for line in lines)
    assert any(line.startswith("cuda") and "unusable" in line for line in lines)


def test_generate_with_an_unusable_device_fails_at_once(capsys):
    assert main(["generate", "hi", "--device", "cuda"]) == 2
    assert "cuda" in capsys.readouterr().err

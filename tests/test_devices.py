"""Device selection: the right backend, or an immediate error that says what to do."""
import pytest

from octavo.backend import Availability, Backend
from octavo.cli import main
from octavo.config import ConfigError
from octavo.devices import list_devices, select_backend


def test_cpu_is_listed_usable_and_auto_picks_an_available_backend():
    infos = {i.name: i for i in list_devices()}
    assert infos["cpu"].availability.ok
    assert select_backend("auto").availability().ok


@pytest.mark.parametrize("device", ["tpu", "xpu", "neuron", "openvino"])
def test_missing_package_fails_naming_the_install(device):
    if any(i.name == device and i.backend is not None for i in list_devices()):
        pytest.skip(f"octavo-{device} is installed here")
    with pytest.raises(ConfigError, match=rf"pip install 'octavo\[{device}\]'"):
        select_backend(device)


def test_unknown_device_is_rejected():
    with pytest.raises(ConfigError, match="unknown device 'quantum'"):
        select_backend("quantum")


def test_unavailable_backend_reports_its_reason(monkeypatch):
    class Absent(Backend):
        name = "absent"

        @classmethod
        def availability(cls):
            return Availability(False, "no absent-chip driver loaded")

        def create_worker(self, config):
            raise AssertionError("must not be reached")

    monkeypatch.setattr("octavo.devices.installed_backends", lambda: {"absent": Absent})
    with pytest.raises(ConfigError, match="unusable: no absent-chip driver loaded"):
        select_backend("absent")


def test_octavo_devices_command(capsys):
    assert main(["devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["cpu", "usable"] for line in lines)
    assert any(line.startswith("neuron") and "unusable" in line for line in lines)


def test_generate_with_an_unusable_device_fails_at_once(capsys):
    assert main(["generate", "hi", "--device", "neuron"]) == 2
    assert "neuron" in capsys.readouterr().err

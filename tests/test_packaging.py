"""The wheel holds every package of the source tree: `pyproject.toml` lists them by hand
(`package-dir` maps core/ and server/ to octavo and octavo.server), and a folder left out
imports here, where the checkout is on the path, but not from an installed wheel."""
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    assert found == set(setuptools["packages"])

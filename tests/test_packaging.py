"""pyproject.toml agrees with the requirements files and finds every package; LICENSE and CITATION.cff are complete."""

import re
import tomllib
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "nibabel", "pydicom", "numpy", "scipy",
           "tensorboard", "tensorboardx", "matplotlib", "tqdm"]


def _name(text: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", text).lower()


def _pins(lines) -> dict[str, str]:
    """name -> version of every `name==version` line (comments, blanks and -r includes skipped)."""
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[_name(match.group(1))] = match.group(2)
    return pins


def _requirements(name: str) -> dict[str, str]:
    return _pins((ROOT / name).read_text().splitlines())


def test_project_metadata():
    project = PYPROJECT["project"]
    assert project["name"] == "heartjax" and project["version"] == "0.5.0"
    assert project["requires-python"] == ">=3.11"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    import heartjax

    assert heartjax.__version__ == project["version"]  # one version, stated in both places


def test_dependencies_are_the_direct_runtime_pins_of_requirements_txt():
    lock = _requirements("requirements.txt")
    deps = _pins(PYPROJECT["project"]["dependencies"])
    assert sorted(deps) == sorted(RUNTIME)
    assert deps == {name: lock[name] for name in deps}
    test_extra = _pins(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert test_extra == {n: lock[n] for n in ("pytest", "pytest-xdist")}


@pytest.mark.parametrize("extra, file", [("cuda12", "requirements-cuda12.txt"), ("cuda13", "requirements-cuda13.txt"),
                                         ("tpu", "requirements-tpu.txt"), ("bench", "requirements-bench.txt")])
def test_extras_are_what_each_requirements_file_adds(extra, file):
    assert _pins(PYPROJECT["project"]["optional-dependencies"][extra]) == _requirements(file)


def test_every_python_folder_is_a_found_package():
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces") is False
    found = set(setuptools.find_packages(where=str(ROOT / find["where"][0]), include=find["include"]))
    wanted = set()
    for top in ("heartjax", "experiments"):
        for folder in [ROOT / top, *(ROOT / top).rglob("*")]:
            if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
                wanted.add(".".join(folder.relative_to(ROOT).parts))
    missing = sorted(wanted - found)
    assert not missing, f"folders with .py files that `pip install` would leave out (add an __init__.py): {missing}"
    assert {p.split(".")[0] for p in found} == {"heartjax", "experiments"}


def test_license_is_the_apache_2_0_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    for section in ("1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                    "4. Redistribution.", "5. Submission of Contributions.", "6. Trademarks.",
                    "7. Disclaimer of Warranty.", "8. Limitation of Liability.",
                    "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert section in text
    assert "Copyright 2026 the heartjax authors" in text
    assert len(text.splitlines()) == 202


def test_citation_cff_has_the_fields():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "abstract"):
        assert isinstance(cff[key], str) and cff[key].strip()
    assert str(cff["version"]) == PYPROJECT["project"]["version"]
    assert cff["license"] == "Apache-2.0"
    assert isinstance(cff["keywords"], list) and len(cff["keywords"]) >= 3
    assert cff["authors"] == [{"name": "heartjax authors"}]

"""The install contract: requirements.lock pins every package pyproject.toml declares, within its ranges, and
`make test` runs on exactly the locked versions (`make test-latest`, which tries the newest allowed versions,
sets SABER_UNLOCKED=1)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import tomllib
from packaging.requirements import Requirement

from tests.conftest import REPO

LOCK = REPO / "requirements.lock"


def _versions_module():
    spec = importlib.util.spec_from_file_location("ci_versions", REPO / ".ci" / "versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


versions = _versions_module()


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_the_lock_pins_every_declared_package_inside_its_range():
    pins = versions.pins(LOCK)
    for requirement in _declared():
        name = versions.normalized(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in the lock: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside pyproject.toml's {requirement.specifier}: run make lock")


def test_the_range_helper_reads_pyproject():
    found = [Requirement(r) for r in versions.ranges(["torch", "TorchVision"])]
    assert found == [r for r in _declared() if r.name in ("torch", "torchvision")]
    with pytest.raises(SystemExit, match="no-such-package"):
        versions.ranges(["no-such-package"])


@pytest.mark.skipif(os.environ.get("SABER_UNLOCKED") == "1", reason="make test-latest runs unlocked on purpose")
def test_this_environment_is_the_lock():
    assert versions.drift(LOCK) == []

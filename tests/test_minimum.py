"""The minimum versions rplat states: pyproject.toml's lower bounds are requirements/minimum.txt's pins, and under
`make test-minimum` (RPLAT_MINIMUM_OVERLAY names the overlay directory it puts first on PYTHONPATH) the pinned
versions, from the overlay, are the ones imported."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
OVERLAY = os.environ.get("RPLAT_MINIMUM_OVERLAY")


def _pins() -> dict[str, str]:
    """requirements/minimum.txt as {canonical name: pinned version}; every line must be an exact `==` pin."""
    pins = {}
    for line in (REPO / "requirements" / "minimum.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", f"{line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_pyproject_states_each_pinned_minimum_as_its_lower_bound() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = {canonicalize_name(req.name): spec.version for req in map(Requirement, dependencies)
             for spec in req.specifier if spec.operator == ">="}
    pins = _pins()
    assert {"transformers", "tokenizers", "huggingface-hub", "peft", "sentence-transformers", "accelerate"} <= set(pins)
    assert {name: lower.get(name) for name in pins} == pins


@pytest.mark.skipif(OVERLAY is None, reason="checks the overlay that `make test-minimum` runs against")
def test_the_overlays_pinned_versions_are_the_ones_imported() -> None:
    assert OVERLAY is not None
    overlay = Path(OVERLAY).resolve()
    for name, version in _pins().items():
        dist = importlib.metadata.distribution(name)
        assert (dist.version, Path(dist.locate_file("")).resolve()) == (version, overlay), name
        module = importlib.import_module(name.replace("-", "_"))  # each pinned package imports by its own name
        assert Path(module.__file__ or "").resolve().is_relative_to(overlay), name

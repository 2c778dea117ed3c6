"""Issue 2: the templates, recipes and references are found from an installed wheel, not only a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_carries_the_skill_and_finds_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0 and "No matching distribution found for hatchling" in proc.stderr:
        pytest.skip("the build backend (hatchling) cannot be fetched here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("reranker_skill-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "skill/_bundle/SKILL.md",
        "skill/_bundle/templates/train_reranker.py.j2",
        "skill/_bundle/recipes/cpu-offline.yaml",
        "skill/ettin_sizes.yaml",
    ):
        assert expected in names
    assert any(n.startswith("skill/_bundle/references/") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from skill.resources import resource_dir; import skill; print(skill.__file__); print(resource_dir('templates')); print(resource_dir('recipes'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, check=True
    ).stdout.split()
    assert out[0].startswith(str(site))
    assert out[1] == str(site / "skill" / "_bundle" / "templates") and out[2] == str(site / "skill" / "_bundle" / "recipes")

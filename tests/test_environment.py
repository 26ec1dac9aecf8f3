"""The install: pins agree between pip and conda, no CUDA packages, no torchvision in the default path."""

import importlib.metadata
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import talk3d_core

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_has_the_same_pins_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(project["dependencies"])
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^,;]*", req) for req in project["dependencies"])
    assert "ffmpeg" in env["dependencies"]
    # Snakemake's per-rule conda environment lists the same packages, and is a file of its own (a
    # link inside workflow/ breaks the workflow's use as a Snakemake module).
    rules_env = ROOT / "workflow/envs/core.yaml"
    assert not rules_env.is_symlink()
    assert yaml.safe_load(rules_env.read_text())["dependencies"] == env["dependencies"]
    assert yaml.safe_load(rules_env.read_text())["channels"] == env["channels"]


def test_no_links_inside_the_workflow():
    links = [p for p in (ROOT / "workflow").rglob("*") if p.is_symlink()]
    assert links == []


def test_torch_is_the_cpu_pin_without_cuda_packages():
    assert importlib.metadata.version("torch").startswith("2.13.0")
    nvidia = [
        d.metadata["Name"]
        for d in importlib.metadata.distributions()
        if "nvidia" in d.metadata["Name"].lower()
    ]
    assert nvidia == []


def test_core_library_imports_neither_snakemake_nor_torchvision():
    modules = [m.name for m in pkgutil.walk_packages(talk3d_core.__path__, "talk3d_core.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torchvision', 'snakemake'))\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]"

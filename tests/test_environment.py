"""The install: pins agree between pip and conda, no CUDA packages, no torchvision in the default path."""

import importlib.metadata
import pkgutil
import re
import subprocess
import sys
import tomllib

import yaml
from conftest import REPO_ROOT

import talk3d_core


def test_conda_env_has_the_same_pins_as_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(project["dependencies"])
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^,;]*", req) for req in project["dependencies"])
    assert "ffmpeg" in env["dependencies"]
    # Snakemake's per-rule conda environment lists the same packages, and is a file of its own (a
    # link inside workflow/ breaks the workflow's use as a Snakemake module).
    rules_env = REPO_ROOT / "workflow/envs/core.yaml"
    assert not rules_env.is_symlink()
    assert yaml.safe_load(rules_env.read_text())["dependencies"] == env["dependencies"]
    assert yaml.safe_load(rules_env.read_text())["channels"] == env["channels"]


def test_no_links_inside_the_workflow():
    links = [p for p in (REPO_ROOT / "workflow").rglob("*") if p.is_symlink()]
    assert links == []


def test_torch_is_the_pinned_release_cpu_or_cuda_build():
    """2.13.0 from PyPI (CUDA, with nvidia-* packages) or from the CPU index (2.13.0+cpu): both are
    the pin, and nothing in the install may reject either."""
    assert re.fullmatch(r"2\.13\.0(\+\w+)?", importlib.metadata.version("torch"))
    assert "grep -i nvidia" not in (REPO_ROOT / "Makefile").read_text()


def test_the_paper_extras_match_the_torch_pin_everywhere():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    paper = project["optional-dependencies"]["paper"]
    assert "torchvision==0.28.0" in paper  # the torchvision release built against torch 2.13.0
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert '-e ".[paper]"' in makefile and "--no-deps facexlib==0.3.0" in makefile
    for doc in ("environment.yml", "workflow/envs/core.yaml", "README.md"):
        text = (REPO_ROOT / doc).read_text()
        assert "facexlib==0.3.0" in text and ".[paper]" in text, doc


def test_core_library_imports_neither_snakemake_nor_torchvision():
    modules = [m.name for m in pkgutil.walk_packages(talk3d_core.__path__, "talk3d_core.")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torchvision', 'snakemake'))\n"
        "print(bad)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert proc.stdout.strip() == "[]"

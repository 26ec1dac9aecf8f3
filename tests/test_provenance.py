"""Source hashes follow a module's own talk3d_core imports and nothing else."""

import pytest

from talk3d_core.util import provenance


@pytest.fixture
def fake_package(tmp_path):
    pkg = tmp_path / "talk3d_core"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text("X = 1\n")
    (pkg / "stage_a.py").write_text("from talk3d_core.io import X\n")
    (pkg / "stage_b.py").write_text("from . import stage_a\nimport numpy\n")
    (pkg / "other.py").write_text("Y = 2\n")
    return pkg


def test_closure_follows_absolute_and_relative_imports(fake_package):
    names = [p.name for p in provenance.module_closure("talk3d_core.stage_b", fake_package)]
    assert names == ["__init__.py", "io.py", "stage_a.py", "stage_b.py"]


def test_hash_changes_only_with_imported_code(fake_package):
    before = provenance.source_hash("talk3d_core.stage_b", package_dir=fake_package)
    (fake_package / "other.py").write_text("Y = 3\n")
    assert provenance.source_hash("talk3d_core.stage_b", package_dir=fake_package) == before
    (fake_package / "io.py").write_text("X = 2\n")
    assert provenance.source_hash("talk3d_core.stage_b", package_dir=fake_package) != before


def test_unknown_module_is_an_error(fake_package):
    with pytest.raises(ValueError, match="not a module"):
        provenance.module_closure("talk3d_core.nope", fake_package)


def test_real_stage_closure():
    names = {p.name for p in provenance.module_closure("talk3d_core.report.ingest_preview")}
    assert names == {"__init__.py", "io.py", "media.py", "sampling.py", "ingest_preview.py"}
    assert len(provenance.source_hash("talk3d_core.report.ingest_preview")) == 16

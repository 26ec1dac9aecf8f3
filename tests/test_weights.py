"""Weights manifest validation, the verifying/resuming downloader and the `require` lookup (no network)."""

from __future__ import annotations

import bz2
import hashlib
import http.server
import io
import logging
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO_ROOT

from talk3d_core.util.weights import (
    DEFAULT_SCHEMA_PATH,
    WeightEntry,
    WeightsError,
    fetch,
    fetch_command,
    find_entry,
    load_manifest,
    pinned_sha256,
    read_state_dict,
    require,
    sha256_file,
    verify_weights,
)

PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10244 bytes: several reads, not a round number
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _entry(url: str, sha256: str = PAYLOAD_SHA, **kw: object) -> WeightEntry:
    fields: dict[str, object] = {"name": "toy", "dest": "toy/model.bin", "license": "MIT", **kw}
    return WeightEntry(url=url, sha256=sha256, **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ local HTTP server


@dataclass
class _Server:
    """What the test server serves and what it saw."""

    files: dict[str, bytes]
    honour_range: bool = True
    # First N requests are cut off after this many body bytes (simulates a dropped connection).
    truncate_first: int = 0
    truncate_at: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)
    base_url: str = ""


@pytest.fixture
def server() -> Iterator[_Server]:
    state = _Server(files={})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            state.requests.append((self.path, self.headers.get("Range")))
            body = state.files.get(self.path)
            if body is None:
                state.bytes_sent.append(0)
                self.send_error(404)
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and state.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    state.bytes_sent.append(0)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if state.truncate_first > 0:
                state.truncate_first -= 1
                chunk = chunk[: state.truncate_at]
                self.close_connection = True
            # Recorded before the write: the client may finish reading (and the test assert) before
            # this handler thread runs again after the last byte leaves.
            state.bytes_sent.append(len(chunk))
            self.wfile.write(chunk)

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    # Safety net: the server stops itself even if a test hangs.
    watchdog = threading.Timer(60, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------ fetch


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(PAYLOAD)
    assert sha256_file(path) == PAYLOAD_SHA


def test_fetch_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    weights = tmp_path / "weights"
    out = fetch(_entry(src.as_uri()), weights, progress=False)
    assert out == weights / "toy" / "model.bin"
    assert out.read_bytes() == PAYLOAD
    # No .part left behind; the stamp records the digest that later loads check.
    assert sorted(p.name for p in out.parent.iterdir()) == [".model.bin.sha256", "model.bin"]


def test_fetch_http_and_already_present_is_not_downloaded(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    entry = _entry(f"{server.base_url}/m.bin", size_bytes=len(PAYLOAD))
    out = fetch(entry, tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    assert fetch(entry, tmp_path, progress=False) == out
    assert len(server.requests) == 1


def test_manually_placed_file_with_right_checksum_is_kept(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "toy" / "model.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)
    fetch(_entry(f"{server.base_url}/nowhere"), tmp_path, progress=False)
    assert server.requests == []


def test_present_file_with_wrong_checksum_is_replaced(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    dest = tmp_path / "toy" / "model.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"stale")
    fetch(_entry(f"{server.base_url}/m.bin"), tmp_path, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_unpublished_checksum_is_recorded_at_first_download_and_checked_after(
    tmp_path: Path, server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.files["/m.bin"] = PAYLOAD
    entry = _entry(f"{server.base_url}/m.bin", sha256=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="talk3d_core.util.weights"):
        out = fetch(entry, tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert PAYLOAD_SHA in caplog.text and "no checksum" in caplog.text
    stamp = tmp_path / "toy" / ".model.bin.sha256"
    assert stamp.read_text().strip() == PAYLOAD_SHA
    # Installed and matching its record: nothing is downloaded again.
    assert fetch(entry, tmp_path, progress=False) == out
    assert len(server.requests) == 1
    # Changed since it was recorded: fetched again.
    out.write_bytes(b"tampered")
    fetch(entry, tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD and len(server.requests) == 2


def test_unpublished_checksum_still_checks_the_size(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    entry = _entry(f"{server.base_url}/m.bin", sha256=None, size_bytes=len(PAYLOAD) + 1)  # type: ignore[arg-type]
    with pytest.raises(WeightsError, match=f"size mismatch .*expected {len(PAYLOAD) + 1} bytes"):
        fetch(entry, tmp_path, progress=False, retries=0)
    assert not (tmp_path / "toy" / "model.bin").exists()


def test_unpublished_checksum_file_placed_by_hand_is_used(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "toy" / "model.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"from NGC by hand")
    assert fetch(_entry(f"{server.base_url}/nowhere", sha256=None), tmp_path, progress=False) == dest  # type: ignore[arg-type]
    assert server.requests == [] and dest.read_bytes() == b"from NGC by hand"


def test_resume_with_range_fetches_only_the_remainder(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    part = tmp_path / "toy" / "model.bin.part"
    part.parent.mkdir(parents=True)
    have = 4000
    part.write_bytes(PAYLOAD[:have])
    out = fetch(_entry(f"{server.base_url}/m.bin"), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert not part.exists()
    assert server.requests == [("/m.bin", f"bytes={have}-")]
    assert server.bytes_sent == [len(PAYLOAD) - have]


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    server.honour_range = False
    part = tmp_path / "toy" / "model.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 3000)  # appending to this would corrupt the result
    out = fetch(_entry(f"{server.base_url}/m.bin"), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.bytes_sent == [len(PAYLOAD)]


def test_range_not_satisfiable_restarts(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    part = tmp_path / "toy" / "model.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * (len(PAYLOAD) + 10))  # longer than the file: the server answers 416
    out = fetch(_entry(f"{server.base_url}/m.bin"), tmp_path, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_dropped_connection_is_retried_and_resumed(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    server.truncate_first, server.truncate_at = 1, 3000
    out = fetch(_entry(f"{server.base_url}/m.bin"), tmp_path, progress=False, retries=2, backoff_s=0)
    assert out.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=3000-"]
    assert server.bytes_sent == [3000, len(PAYLOAD) - 3000]


def test_retries_exhausted_keeps_part_for_next_run(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    server.truncate_first, server.truncate_at = 10, 1000
    entry = _entry(f"{server.base_url}/m.bin")
    with pytest.raises(WeightsError, match=r"failed after 2 attempt\(s\)"):
        fetch(entry, tmp_path, progress=False, retries=1, backoff_s=0)
    part = tmp_path / "toy" / "model.bin.part"
    assert part.read_bytes() == PAYLOAD[:2000]
    server.truncate_first = 0
    assert fetch(entry, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1][1] == "bytes=2000-"


def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path: Path, server: _Server) -> None:
    server.files["/m.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(WeightsError) as info:
        fetch(_entry(f"{server.base_url}/m.bin", sha256=wrong), tmp_path, progress=False)
    message = str(info.value)
    assert "checksum mismatch" in message and wrong in message and PAYLOAD_SHA in message
    assert list((tmp_path / "toy").iterdir()) == []


def test_http_404_is_not_retried(tmp_path: Path, server: _Server) -> None:
    url = f"{server.base_url}/missing.bin"
    with pytest.raises(WeightsError, match=r"HTTP 404") as info:
        fetch(_entry(url), tmp_path, progress=False, retries=3, backoff_s=0)
    assert url in str(info.value)
    assert len(server.requests) == 1


def test_missing_file_url_names_it(tmp_path: Path) -> None:
    url = (tmp_path / "absent.bin").as_uri()
    with pytest.raises(WeightsError, match="absent.bin"):
        fetch(_entry(url), tmp_path / "w", progress=False, backoff_s=0)


# ------------------------------------------------------------------------------ archives


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _serve_file(tmp_path: Path, name: str, data: bytes) -> tuple[str, str]:
    src = tmp_path / "src" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return src.as_uri(), hashlib.sha256(data).hexdigest()


def test_extract_zip_directory(tmp_path: Path) -> None:
    archive = _zip_bytes({"pack/a.pth": b"A", "pack/sub/b.json": b"{}"})
    url, sha = _serve_file(tmp_path, "pack.zip", archive)
    weights = tmp_path / "w"
    entry = _entry(url, sha, dest="fan/models", extract="zip")
    out = fetch(entry, weights, progress=False)
    # The lone top-level folder "pack" is descended into: dest holds its contents.
    assert out == weights / "fan" / "models"
    assert (out / "a.pth").read_bytes() == b"A"
    assert (out / "sub" / "b.json").read_bytes() == b"{}"
    assert not list((weights / ".downloads").iterdir())  # archive removed after unpacking
    assert (weights / "fan" / ".models.sha256").read_text().strip() == sha

    # Installed: a second fetch neither downloads nor touches it.
    Path(url.removeprefix("file://")).unlink()
    assert fetch(entry, weights, progress=False) == out


def test_extract_zip_single_file_becomes_dest(tmp_path: Path) -> None:
    url, sha = _serve_file(tmp_path, "one.zip", _zip_bytes({"deep/dir/weights.pth": b"W" * 100}))
    out = fetch(
        _entry(url, sha, dest="parsing/79999_iter.pth", extract="zip"), tmp_path / "w", progress=False
    )
    assert out.is_file() and out.read_bytes() == b"W" * 100


def test_extract_tar_and_bz2(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {"x.bin": b"x", "y.bin": b"yy"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    url, sha = _serve_file(tmp_path, "t.tar.gz", buf.getvalue())
    out = fetch(_entry(url, sha, dest="t", extract="tar"), tmp_path / "w", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["x.bin", "y.bin"]

    url, sha = _serve_file(tmp_path, "m.dat.bz2", bz2.compress(PAYLOAD))
    out = fetch(
        _entry(url, sha, name="b", dest="shape_predictor.dat", extract="bz2"), tmp_path / "w", progress=False
    )
    assert out.read_bytes() == PAYLOAD


def test_extract_rejects_zip_slip(tmp_path: Path) -> None:
    url, sha = _serve_file(tmp_path, "evil.zip", _zip_bytes({"../evil.txt": b"x", "ok.txt": b"y"}))
    weights = tmp_path / "w"
    with pytest.raises(WeightsError, match="outside"):
        fetch(_entry(url, sha, dest="d", extract="zip"), weights, progress=False)
    assert not (weights / "d").exists() and not (tmp_path / "evil.txt").exists()


def test_extract_rejects_corrupt_archive(tmp_path: Path) -> None:
    url, sha = _serve_file(tmp_path, "bad.zip", b"not a zip at all")
    with pytest.raises(WeightsError, match="cannot unpack as zip"):
        fetch(_entry(url, sha, dest="d", extract="zip"), tmp_path / "w", progress=False)


# ------------------------------------------------------------------------------ manifest

GOOD = {
    "name": "a",
    "url": "https://example.org/a.pth",
    "sha256": "ab" * 32,
    "license": "MIT",
    "dest": "a/a.pth",
}


def _write_manifest(tmp_path: Path, entries: list[dict[str, object]]) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({"weights": entries}))
    return path


def test_schema_is_valid_and_documents_every_key() -> None:
    schema = yaml.safe_load(DEFAULT_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                assert isinstance(sub, dict) and sub.get("description"), f"{where}.{key} lacks a description"
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(schema, "schema")


def test_shipped_manifest_is_valid() -> None:
    entries = load_manifest(REPO_ROOT / "resources" / "weights" / "manifest.yaml")
    for entry in entries:
        assert entry.url.startswith(("https://", "http://", "file://"))


def test_load_manifest_full_entry(tmp_path: Path) -> None:
    full = {
        **GOOD,
        "sha256": "AB" * 32,
        "size_bytes": 12,
        "description": "toy",
        "used_by": ["bisenet"],
        "extract": "zip",
    }
    entries = load_manifest(_write_manifest(tmp_path, [full, {**GOOD, "name": "b", "dest": "b.pth"}]))
    assert entries[0] == WeightEntry(
        name="a",
        url=GOOD["url"],
        sha256="ab" * 32,
        license="MIT",
        dest="a/a.pth",
        size_bytes=12,
        description="toy",
        used_by=("bisenet",),
        extract="zip",
    )
    assert entries[1].extract is None and entries[1].used_by == ()
    assert load_manifest(_write_manifest(tmp_path, [])) == []


@pytest.mark.parametrize(
    ("bad", "fragments"),
    [
        ({"colour": "red"}, ["entry 1 ('b')", "unknown key", "'colour'"]),
        ({"sha256": "abc123"}, ["entry 1 ('b')", "key 'sha256'", "64 hex"]),
        ({"sha256": "g" * 64}, ["entry 1 ('b')", "key 'sha256'"]),
        ({"dest": "/etc/passwd"}, ["entry 1 ('b')", "key 'dest'", "absolute"]),
        ({"dest": "../outside.pth"}, ["entry 1 ('b')", "key 'dest'", "'..'"]),
        ({"dest": "manifest.yaml"}, ["entry 1 ('b')", "key 'dest'", "overwrite"]),
        ({"url": "ftp://example.org/x"}, ["entry 1 ('b')", "key 'url'"]),
        ({"extract": "rar"}, ["entry 1 ('b')", "key 'extract'"]),
        ({"size_bytes": -1}, ["entry 1 ('b')", "key 'size_bytes'"]),
        ({"name": "a"}, ["entry 1 ('a')", "key 'name'", "duplicate name"]),
        ({"dest": "a/a.pth"}, ["entry 1 ('b')", "key 'dest'", "duplicate dest"]),
        ({"dest": "a/a.pth/inner"}, ["entry 1 ('b')", "key 'dest'", "inside"]),
    ],
)
def test_manifest_errors_name_file_entry_and_key(
    tmp_path: Path, bad: dict[str, object], fragments: list[str]
) -> None:
    second = {**GOOD, "name": "b", "dest": "b.pth", **bad}
    path = _write_manifest(tmp_path, [GOOD, second])
    with pytest.raises(WeightsError) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_manifest_missing_key_and_bad_top_level(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, [{k: v for k, v in GOOD.items() if k != "license"}])
    with pytest.raises(WeightsError, match=r"entry 0 \('a'\): missing required key\(s\) 'license'"):
        load_manifest(path)
    path.write_text("models: []\n")
    with pytest.raises(WeightsError, match=r"unknown key\(s\) 'models'"):
        load_manifest(path)
    path.write_text("weights: [unclosed\n")
    with pytest.raises(WeightsError, match="not valid YAML"):
        load_manifest(path)


# ------------------------------------------------------------------------------ require


def test_require_present_missing_and_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "resources" / "weights"
    entry = replace(_entry("https://example.org/m.bin"), used_by=("bisenet",))
    manifest = [entry]

    with pytest.raises(WeightsError) as info:
        require("toy", weights, manifest)
    message = str(info.value)
    assert "snakemake --cores 1 resources/weights/toy/model.bin" in message
    assert "bisenet" in message and "https://example.org/m.bin" in message and "MIT" in message
    assert fetch_command(entry, weights) == "snakemake --cores 1 resources/weights/toy/model.bin"

    path = weights / "toy" / "model.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)
    assert require("toy", weights, manifest) == path
    assert require("toy/model.bin", weights, manifest) == path  # by dest too

    with pytest.raises(WeightsError, match="no weights entry named 'arcface'"):
        require("arcface", weights, manifest)


def test_require_checks_the_digest_at_every_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetched and verified once; swapped or corrupted since: refused when loaded, not only at fetch."""
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "resources" / "weights"
    url, sha = _serve_file(tmp_path, "m.bin", PAYLOAD)
    entry = _entry(url, sha)
    path = fetch(entry, weights, progress=False)
    assert require("toy", weights, [entry]) == path
    path.write_bytes(PAYLOAD[:-1] + b"!")  # same size, one byte changed
    with pytest.raises(WeightsError) as info:
        require("toy", weights, [entry])
    message = str(info.value)
    assert str(path) in message and sha in message and "the manifest says" in message
    assert "snakemake --cores 1 resources/weights/toy/model.bin" in message


def test_a_file_no_manifest_pins_is_recorded_on_first_use_then_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TorchScript or a state dict placed by hand: its first load records the digest, later ones check."""
    path = tmp_path / "syncnet_v2.model"
    path.write_bytes(PAYLOAD)
    with caplog.at_level(logging.WARNING, logger="talk3d_core.util.weights"):
        assert verify_weights(path) == path
    assert "no published checksum" in caplog.text
    assert (tmp_path / ".syncnet_v2.model.sha256").read_text().strip() == PAYLOAD_SHA
    assert verify_weights(path) == path
    path.write_bytes(b"replaced")
    with pytest.raises(
        WeightsError, match=r"syncnet_v2\.model: sha256 .*recorded at its first install or use"
    ):
        verify_weights(path, fetch_hint="see resources/weights/README.md")


def test_a_file_given_by_path_is_checked_against_its_manifest_entry(tmp_path: Path) -> None:
    entry = _entry("https://example.org/m.bin")
    installed = tmp_path / "toy" / "model.bin"
    assert pinned_sha256(installed, tmp_path, [entry]) == PAYLOAD_SHA
    assert pinned_sha256(tmp_path / "elsewhere.bin", tmp_path, [entry]) is None
    # Verified against the manifest, a file gets the stamp that later checks by path alone use.
    good = tmp_path / "good" / "model.bin"
    good.parent.mkdir()
    good.write_bytes(PAYLOAD)
    verify_weights(good, PAYLOAD_SHA)
    assert (good.parent / ".model.bin.sha256").read_text().strip() == PAYLOAD_SHA
    installed.parent.mkdir()
    installed.write_bytes(b"not the payload")
    with pytest.raises(WeightsError, match="the manifest says"):
        verify_weights(installed, pinned_sha256(installed, tmp_path, [entry]))


def test_read_state_dict_refuses_a_changed_file(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "expert.pth"
    torch.save({"w": torch.ones(2)}, path)
    assert set(read_state_dict(path, what="toy", source="by hand")) == {"w"}
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(WeightsError, match=r"expert\.pth: sha256 .*refusing to load it; by hand"):
        read_state_dict(path, what="toy", source="by hand")


def test_require_reads_a_manifest_path(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, [GOOD])
    assert find_entry(load_manifest(path), "a").dest == "a/a.pth"
    with pytest.raises(WeightsError, match="fetch them with: snakemake --cores 1 .*a/a.pth"):
        require("a", tmp_path / "w", path)


def test_a_state_dict_file_is_checked_against_its_manifest_digest(tmp_path, monkeypatch):
    import torch

    from talk3d_core.util import weights
    from talk3d_core.util.weights import read_state_dict

    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS_DIR", tmp_path / "resources/weights")
    monkeypatch.setattr(weights, "DEFAULT_MANIFEST", tmp_path / "resources/weights/manifest.yaml")
    path = tmp_path / "resources/weights/syncnet/expert.pth"
    path.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, path)
    entry = {"name": "expert", "url": "https://example.org/e.pth", "license": "test"}
    manifest = tmp_path / "resources/weights/manifest.yaml"
    # Not the file the manifest pins: refused on its first use (it used to be recorded and trusted).
    pins = {"dest": "syncnet/expert.pth", "sha256": "0" * 64}
    manifest.write_text(yaml.safe_dump({"weights": [entry | pins]}))
    with pytest.raises(WeightsError, match="expert.pth"):
        read_state_dict(path, what="expert", source="test")
    manifest.write_text(yaml.safe_dump({"weights": [entry | pins | {"sha256": sha256_file(path)}]}))
    assert set(read_state_dict(path, what="expert", source="test")) == {"w"}

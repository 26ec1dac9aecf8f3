"""Pretrained model weights: a checked manifest, a verifying downloader and a lookup for backends.

Every external model (EG3D pickle, face parsing, landmarks, SyncNet, ...) is listed in
``resources/weights/manifest.yaml`` with its URL, SHA-256 and license. The workflow's ``weights`` rule
calls :func:`fetch` to install an entry at ``resources/weights/<dest>``; backends call :func:`require`,
which never downloads: a missing file raises :class:`WeightsError` naming the command that fetches it.

Downloads stream into ``<dest>.part`` while hashing, resume with an HTTP Range request after an
interruption, and are renamed onto ``dest`` only once the checksum matches. Archives (``extract``) are
downloaded to ``<weights_dir>/.downloads/`` and unpacked into ``dest``; a hidden stamp file
``.<dest name>.sha256`` beside ``dest`` records which archive the unpacked tree came from.

An entry whose publisher states no checksum has ``sha256: null``: its first download is installed
with a warning naming the digest it had, which the same stamp file records, and later runs check
the file against that record (trust on first use, until someone pins the digest in the manifest).
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from talk3d_core.util.io import atomic_path

logger = logging.getLogger(__name__)

#: The schema shipped with the workflow (draft 2020-12).
_REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where the weights rule installs the manifest's files (resources/weights of this checkout).
DEFAULT_WEIGHTS_DIR = _REPO_ROOT / "resources" / "weights"
DEFAULT_MANIFEST = DEFAULT_WEIGHTS_DIR / "manifest.yaml"
DEFAULT_SCHEMA_PATH = _REPO_ROOT / "workflow" / "schemas" / "weights_manifest.schema.yaml"

Extract = Literal["zip", "tar", "bz2"]

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "talk3d-weights/1 (+python-urllib)"
# HTTP statuses worth retrying; any other 4xx means the URL itself is wrong.
_RETRY_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_ARCHIVE_SUFFIX = {"zip": ".zip", "tar": ".tar", "bz2": ".bz2"}
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class WeightsError(RuntimeError):
    """A manifest is invalid, a download failed or did not verify, or a model file is missing."""


@dataclass(frozen=True)
class WeightEntry:
    """One model file of the manifest (see workflow/schemas/weights_manifest.schema.yaml).

    ``sha256`` is lower-case hex of the downloaded bytes (of the archive when ``extract`` is set), or
    None where the publisher states none (the first download's digest is recorded instead);
    ``dest`` is relative to the weights directory and names the installed file or unpacked tree.
    """

    name: str
    url: str
    sha256: str | None
    license: str
    dest: str
    size_bytes: int | None = None
    description: str = ""
    used_by: tuple[str, ...] = ()
    extract: Extract | None = None

    def __post_init__(self) -> None:
        # Hex digests compare in lower case everywhere, whoever built the entry.
        if self.sha256 is not None:
            object.__setattr__(self, "sha256", self.sha256.lower())

    def path_in(self, weights_dir: str | os.PathLike[str]) -> Path:
        """Where this entry is installed under ``weights_dir``."""
        return Path(weights_dir) / self.dest


class _TransientError(Exception):
    """A download attempt failed in a way another attempt may fix (network, truncated body)."""


# ---------------------------------------------------------------------------------------------- manifest


def load_manifest(
    path: str | os.PathLike[str], schema_path: str | os.PathLike[str] | None = None
) -> list[WeightEntry]:
    """Read and validate a weights manifest; return its entries in file order.

    Problems are collected and raised together as one :class:`WeightsError`, one line each, naming
    the manifest file, the entry (index and name) and the key.
    """
    import jsonschema

    path = Path(path)
    schema_file = Path(schema_path) if schema_path is not None else DEFAULT_SCHEMA_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise WeightsError(f"{path}: cannot read weights manifest: {err}") from err
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise WeightsError(f"{path}: not valid YAML: {err}") from err
    try:
        schema = yaml.safe_load(schema_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise WeightsError(f"{schema_file}: cannot read the weights manifest schema: {err}") from err

    validator = jsonschema.Draft202012Validator(schema)
    problems = [_describe_schema_error(doc, err) for err in validator.iter_errors(doc)]
    if problems:
        raise WeightsError(
            f"{path}: invalid weights manifest:\n" + "\n".join(f"  {p}" for p in sorted(problems))
        )

    entries = [_entry_from_mapping(item) for item in doc["weights"]]
    problems = _cross_entry_problems(entries)
    if problems:
        raise WeightsError(f"{path}: invalid weights manifest:\n" + "\n".join(f"  {p}" for p in problems))
    return entries


def _entry_from_mapping(item: dict[str, Any]) -> WeightEntry:
    return WeightEntry(
        name=item["name"],
        url=item["url"],
        sha256=item["sha256"],
        license=item["license"],
        dest=item["dest"],
        size_bytes=item.get("size_bytes"),
        description=item.get("description", ""),
        used_by=tuple(item.get("used_by", ())),
        extract=item.get("extract"),
    )


def _entry_label(doc: Any, index: int) -> str:
    try:
        name = doc["weights"][index].get("name")
    except (AttributeError, IndexError, KeyError, TypeError):
        name = None
    return f"entry {index} ({name!r})" if isinstance(name, str) else f"entry {index}"


def _describe_schema_error(doc: Any, err: Any) -> str:
    """One line for a jsonschema error: where (entry, key) and what is wrong."""
    path = list(err.absolute_path)
    if not path or path[0] != "weights" or len(path) < 2:
        where = "top level" if not path else f"key {path[0]!r}"
        if err.validator == "additionalProperties" and not path:
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            return f"top level: unknown key(s) {', '.join(map(repr, extra))} (only 'weights' is allowed)"
        return f"{where}: {err.message}"

    where = _entry_label(doc, path[1])
    instance = err.instance
    if len(path) == 2:
        # The error is about the entry mapping itself: name the offending keys.
        if err.validator == "additionalProperties" and isinstance(instance, dict):
            allowed = err.schema.get("properties", {})
            extra = sorted(k for k in instance if k not in allowed)
            return (
                f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed keys are "
                f"{', '.join(sorted(allowed))}"
            )
        if err.validator == "required" and isinstance(instance, dict):
            missing = [k for k in err.validator_value if k not in instance]
            return f"{where}: missing required key(s) {', '.join(map(repr, missing))}"
        return f"{where}: {err.message}"

    key = path[2]
    if key == "dest" and isinstance(instance, str):
        return f"{where}, key 'dest': {_dest_problem(instance)}"
    if key == "sha256" and isinstance(instance, str):
        return f"{where}, key 'sha256': {instance!r} is not 64 hex digits (got {len(instance)} characters)"
    suffix = "".join(f"[{p}]" for p in path[3:])
    return f"{where}, key {key!r}{suffix}: {err.message}"


def _dest_problem(dest: str) -> str:
    """Why ``dest`` is not an allowed relative path, in words."""
    if dest.startswith("/") or PurePosixPath(dest).is_absolute() or re.match(r"^[A-Za-z]:", dest):
        return f"{dest!r} is an absolute path; give a path relative to the weights directory"
    parts = dest.split("/")
    if ".." in parts:
        return f"{dest!r} contains '..'; it must stay inside the weights directory"
    if dest in ("manifest.yaml", "README.md"):
        return f"{dest!r} would overwrite a file shipped in the weights directory"
    if "\\" in dest:
        return f"{dest!r} contains a backslash; separate folders with '/'"
    if any(p == "" for p in parts):
        return f"{dest!r} has an empty path part (leading, trailing or doubled '/')"
    if any(p.startswith(".") for p in parts):
        return (
            f"{dest!r} has a hidden ('.'-prefixed) part; those names are reserved for downloads in progress"
        )
    return (
        f"{dest!r} may only use letters, digits, '_', '.', '+', '-' and '/' "
        "(each part starting with a letter, digit or '_')"
    )


def _cross_entry_problems(entries: Sequence[WeightEntry]) -> list[str]:
    """Duplicate names, duplicate dests, and a dest inside another entry's dest."""
    problems: list[str] = []
    first_name: dict[str, int] = {}
    first_dest: dict[str, int] = {}
    for i, entry in enumerate(entries):
        label = f"entry {i} ({entry.name!r})"
        if entry.name in first_name:
            problems.append(
                f"{label}, key 'name': duplicate name, already used by entry {first_name[entry.name]}"
            )
        else:
            first_name[entry.name] = i
        if entry.dest in first_dest:
            j = first_dest[entry.dest]
            problems.append(f"{label}, key 'dest': duplicate dest {entry.dest!r}, already used by entry {j}")
        else:
            first_dest[entry.dest] = i
    for i, a in enumerate(entries):
        for j, b in enumerate(entries):
            if i != j and b.dest.startswith(a.dest + "/"):
                problems.append(
                    f"entry {j} ({b.name!r}), key 'dest': {b.dest!r} lies inside {a.dest!r} of entry {i}"
                )
    return problems


def find_entry(manifest: Sequence[WeightEntry], name_or_dest: str) -> WeightEntry:
    """The entry whose ``name`` or ``dest`` equals ``name_or_dest``; :class:`WeightsError` if none."""
    for entry in manifest:
        if name_or_dest in (entry.name, entry.dest):
            return entry
    known = ", ".join(e.name for e in manifest) or "none"
    raise WeightsError(
        f"no weights entry named {name_or_dest!r} in the manifest (known: {known}); "
        "add it to resources/weights/manifest.yaml (see resources/weights/README.md)"
    )


# ------------------------------------------------------------------------------------------ lookup


def fetch_command(entry: WeightEntry, weights_dir: str | os.PathLike[str]) -> str:
    """The shell command that fetches ``entry``: ``snakemake --cores 1 <weights_dir>/<dest>``.

    The target is shown relative to the working directory when it lies below it (the usual case,
    ``resources/weights/<dest>`` from the repository root), else as an absolute path.
    """
    target = Path(weights_dir).absolute() / entry.dest
    try:
        shown = target.relative_to(Path.cwd())
    except ValueError:
        shown = target
    return f"snakemake --cores 1 {shown.as_posix()}"


def require(
    name_or_dest: str,
    weights_dir: str | os.PathLike[str],
    manifest: Sequence[WeightEntry] | str | os.PathLike[str],
) -> Path:
    """Path of an installed model file (or unpacked directory); never downloads.

    ``manifest`` is a list of entries or the path of a manifest file. A file is checked against the
    manifest's digest (or the one recorded when it was installed) with :func:`verify_weights`, so a
    file corrupted or replaced since is refused; a directory's install stamp must match the manifest.
    A missing file raises :class:`WeightsError` naming the snakemake command that fetches it, the URL
    and the license.
    """
    entries = load_manifest(manifest) if isinstance(manifest, str | os.PathLike) else manifest
    entry = find_entry(entries, name_or_dest)
    path = entry.path_in(weights_dir)
    if path.is_file():
        return verify_weights(path, entry.sha256, fetch_hint=fetch_command(entry, weights_dir))
    if path.exists():
        recorded = _recorded_sha256(path)
        if entry.sha256 is not None and recorded is not None and recorded != entry.sha256:
            raise WeightsError(
                f"{path} was unpacked from an archive with sha256 {recorded}, the manifest now says "
                f"{entry.sha256}; fetch it again with: {fetch_command(entry, weights_dir)}"
            )
        return path
    users = f" (used by {', '.join(entry.used_by)})" if entry.used_by else ""
    raise WeightsError(
        f"model weights {entry.name!r}{users} are missing: {path}\n"
        f"  fetch them with: {fetch_command(entry, weights_dir)}\n"
        f"  source: {entry.url}\n  license: {entry.license}"
    )


# ------------------------------------------------------------------------------------------ fetching


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lower-case hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.sha256"


def _recorded_sha256(dest: Path) -> str | None:
    """The digest the stamp beside ``dest`` records (None without a stamp)."""
    stamp = _stamp_path(dest)
    return stamp.read_text().strip() if stamp.is_file() else None


# Digests already computed in this process, by (path, size, mtime): a file loaded twice is hashed once.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _digest_of(path: Path) -> str:
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def pinned_sha256(
    path: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: Sequence[WeightEntry] | str | os.PathLike[str] = DEFAULT_MANIFEST,
) -> str | None:
    """The manifest's digest of the entry installed at ``path`` (None when no entry is installed
    there, or the entry has no digest), for :func:`verify_weights` of a file given by path."""
    entries = load_manifest(manifest) if isinstance(manifest, str | os.PathLike) else manifest
    target = Path(path).resolve()
    return next((e.sha256 for e in entries if e.path_in(weights_dir).resolve() == target), None)


def verify_weights(
    path: str | os.PathLike[str], expected: str | None = None, *, fetch_hint: str = ""
) -> Path:
    """Check a model file against its digest before it is loaded; returns ``path``.

    The digest is ``expected`` (the manifest's) or else the one recorded in the stamp
    ``.<name>.sha256`` beside the file (written when it was installed). A file with neither, e.g. a
    checkpoint placed by hand that no manifest entry pins, is trusted on first use: its digest is
    recorded in that stamp (with a warning), so a later change is caught. Raises
    :class:`WeightsError` naming the file, both digests and ``fetch_hint`` (how to get a good copy)
    when they differ, as for a corrupted, truncated or swapped file.
    """
    path = Path(path)
    actual = _digest_of(path)
    recorded = _recorded_sha256(path)
    want = expected.lower() if expected else recorded
    if want is None:
        try:
            with atomic_path(_stamp_path(path)) as tmp:
                tmp.write_text(actual + "\n")
            logger.warning(
                "%s: no published checksum; recorded its sha256 %s in %s, later loads check against it",
                path, actual, _stamp_path(path),
            )  # fmt: skip
        except OSError as exc:  # a read-only weights folder: use the file, say it is unchecked
            logger.warning("%s: no checksum to check it against and none can be recorded (%s)", path, exc)
        return path
    if actual != want:
        source = "the manifest" if expected else f"{_stamp_path(path)} (recorded at its first install or use)"
        hint = f"; {fetch_hint}" if fetch_hint else ""
        raise WeightsError(
            f"{path}: sha256 {actual}, but {source} says {want}: the file is corrupt, truncated or was "
            f"replaced since it was installed; refusing to load it{hint}"
        )
    if recorded is None:  # verified against the manifest: later checks by path alone find the stamp
        with contextlib.suppress(OSError), atomic_path(_stamp_path(path)) as tmp:
            tmp.write_text(actual + "\n")
    return path


def _is_installed(entry: WeightEntry, dest: Path) -> bool:
    """True when ``dest`` holds exactly what the manifest describes (hashing it if it is a file).

    Without a published checksum the expected digest is the one recorded at the first download; a
    file placed by hand before any download is taken as it is, with a warning.
    """
    expected = entry.sha256 or _recorded_sha256(dest)
    if entry.extract is None:
        if not dest.is_file():
            return False
        if expected is None:
            logger.warning(
                "%s: %s was placed by hand and the manifest has no checksum for it; using it unverified",
                entry.name,
                dest,
            )
            return True
        actual = sha256_file(dest)
        if actual == expected:
            return True
        logger.warning(
            "%s: %s has sha256 %s, expected %s; fetching it again", entry.name, dest, actual, expected
        )
        return False
    return dest.exists() and expected is not None and _recorded_sha256(dest) == expected


def fetch(
    entry: WeightEntry,
    weights_dir: str | os.PathLike[str],
    *,
    retries: int = 3,
    timeout_s: float = 60,
    progress: bool = True,
    backoff_s: float = 2.0,
) -> Path:
    """Install ``entry`` under ``weights_dir`` and return its path; no-op if already installed.

    Streams ``entry.url`` into a ``.part`` file while hashing it, resuming a previous partial download
    with an HTTP Range request when the server honours it (restarting otherwise). Network failures are
    retried ``retries`` more times, waiting ``backoff_s * 2**attempt`` seconds; each retry resumes.
    The checksum is verified before the file is atomically renamed into place (or, with ``extract``,
    unpacked); on a mismatch the partial file is deleted and :class:`WeightsError` gives expected and
    actual digests. ``timeout_s`` bounds each socket operation; ``progress`` enables the tqdm bar
    (which in any case turns itself off when stderr is not a terminal).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    weights_dir = Path(weights_dir)
    dest = entry.path_in(weights_dir)
    if _is_installed(entry, dest):
        logger.info("%s: %s already present, checksum verified", entry.name, dest)
        return dest

    if entry.extract is None:
        download = dest
    else:
        download = weights_dir / ".downloads" / f"{entry.name}{_ARCHIVE_SUFFIX[entry.extract]}"
    download.parent.mkdir(parents=True, exist_ok=True)

    if (
        download.is_file()
        and entry.extract is not None
        and entry.sha256 is not None
        and sha256_file(download) == entry.sha256
    ):
        logger.info("%s: verified archive %s already downloaded", entry.name, download)
        digest = entry.sha256
    else:
        part = download.with_name(download.name + ".part")
        digest = _download_verified(
            entry, part, retries=retries, timeout_s=timeout_s, progress=progress, backoff_s=backoff_s
        )
        if entry.extract is None:
            # Record the digest before the file appears (loads check against it, see verify_weights):
            # a kill in between must not leave a file that looks placed by hand.
            with atomic_path(_stamp_path(dest)) as stamp_tmp:
                stamp_tmp.write_text(digest + "\n")
        os.replace(part, download)

    if entry.extract is not None:
        _install_archive(entry, download, dest, digest)
        download.unlink()
    logger.info("%s: installed %s", entry.name, dest)
    return dest


def _download_verified(
    entry: WeightEntry, part: Path, *, retries: int, timeout_s: float, progress: bool, backoff_s: float
) -> str:
    """Download into ``part`` (resuming it) with retries, then check size and checksum; return the
    sha256 (an entry without a published checksum is checked for its size only, and warned about)."""
    if entry.size_bytes is not None and part.is_file() and part.stat().st_size > entry.size_bytes:
        logger.info(
            "%s: %s is larger than the expected %d bytes; restarting", entry.name, part, entry.size_bytes
        )
        part.unlink()

    if entry.size_bytes is not None and part.is_file() and part.stat().st_size == entry.size_bytes:
        # A previous run got every byte but stopped before the rename: verify instead of asking for more.
        logger.info("%s: %s is complete; verifying it", entry.name, part)
        digest = sha256_file(part)
    else:
        digest = _download_with_retries(
            entry, part, retries=retries, timeout_s=timeout_s, progress=progress, backoff_s=backoff_s
        )

    size = part.stat().st_size
    mismatch = entry.sha256 is not None and digest != entry.sha256
    if mismatch or (entry.size_bytes is not None and size != entry.size_bytes):
        part.unlink()
        expected = [f"sha256 {entry.sha256}"] if entry.sha256 is not None else []
        expected += [f"{entry.size_bytes} bytes"] if entry.size_bytes is not None else []
        raise WeightsError(
            f"{entry.name}: {'checksum' if mismatch else 'size'} mismatch for {entry.url}: "
            f"expected {', '.join(expected)}, got sha256 {digest}, {size} bytes; "
            "the download was deleted (is the URL or the manifest's sha256 out of date?)"
        )
    if entry.sha256 is None:
        logger.warning(
            "%s: the publisher states no checksum for %s; this download (%d bytes) has sha256 %s, recorded"
            " beside the file and checked on later runs; pin it in the manifest once confirmed",
            entry.name,
            entry.url,
            size,
            digest,
        )
    else:
        logger.info("%s: sha256 verified (%d bytes)", entry.name, size)
    return digest


def _download_with_retries(
    entry: WeightEntry, part: Path, *, retries: int, timeout_s: float, progress: bool, backoff_s: float
) -> str:
    """Run :func:`_download_once` up to ``retries + 1`` times (each resuming); return the sha256."""
    logger.info(
        "%s: downloading %s -> %s (license: %s)", entry.name, entry.url, part.with_suffix(""), entry.license
    )
    attempts = retries + 1
    for attempt in range(attempts):
        try:
            return _download_once(entry, part, timeout_s=timeout_s, progress=progress)
        except _TransientError as err:
            if attempt + 1 == attempts:
                raise WeightsError(
                    f"{entry.name}: download of {entry.url} failed after {attempts} attempt(s): {err}; "
                    f"the partial file {part} is kept and the next run resumes it"
                ) from err
            delay = backoff_s * 2**attempt
            logger.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                entry.name,
                attempt + 1,
                attempts,
                err,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _download_once(entry: WeightEntry, part: Path, *, timeout_s: float, progress: bool) -> str:
    """One attempt: append to ``part`` from its current size (or restart) and return the full sha256.

    Raises :class:`_TransientError` for failures worth retrying, :class:`WeightsError` for others.
    """
    from tqdm import tqdm

    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(entry.url, offset, timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The server cannot serve from our offset (file changed, or the part is already whole):
            # start over rather than guess.
            logger.info("%s: server refused to resume at byte %d; restarting", entry.name, offset)
            part.unlink()
            return _download_once(entry, part, timeout_s=timeout_s, progress=progress)
        if err.code in _RETRY_HTTP:
            raise _TransientError(f"HTTP {err.code} {err.reason}") from err
        raise WeightsError(
            f"{entry.name}: cannot download {entry.url}: HTTP {err.code} {err.reason}"
        ) from err
    except (urllib.error.URLError, OSError, HTTPException) as err:
        if entry.url.startswith("file:"):
            raise WeightsError(f"{entry.name}: cannot read {entry.url}: {err}") from err
        raise _TransientError(str(err)) from err

    with response:
        status = getattr(response, "status", None)
        resumed = offset > 0 and status == 206 and _content_range_start(response.headers) == offset
        if offset and not resumed:
            logger.info("%s: server does not support resuming; restarting from byte 0", entry.name)
            offset = 0
        hasher = hashlib.sha256()
        if resumed:
            logger.info("%s: resuming at byte %d", entry.name, offset)
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK_BYTES):
                    hasher.update(chunk)

        length_header = response.headers.get("Content-Length")
        remaining = int(length_header) if length_header and length_header.isdigit() else None
        total = offset + remaining if remaining is not None else entry.size_bytes
        received = 0
        next_log = 0.1
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=entry.name,
            disable=None if progress else True,  # None: off when not on a terminal
            leave=False,
        )
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while True:
                    try:
                        chunk = response.read(_CHUNK_BYTES)
                    except (OSError, HTTPException) as err:
                        raise _TransientError(
                            f"connection lost after {offset + received} bytes: {err}"
                        ) from err
                    if not chunk:
                        break
                    f.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if total and (offset + received) / total >= next_log:
                        logger.info(
                            "%s: %d / %d bytes (%.0f%%)",
                            entry.name,
                            offset + received,
                            total,
                            100 * (offset + received) / total,
                        )
                        next_log = (offset + received) / total + 0.1
        finally:
            bar.close()
    if remaining is not None and received < remaining:
        raise _TransientError(f"connection closed after {offset + received} of {offset + remaining} bytes")
    return hasher.hexdigest()


def _open(url: str, offset: int, timeout_s: float) -> Any:
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def _content_range_start(headers: Any) -> int | None:
    match = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------ archives


def _install_archive(entry: WeightEntry, archive: Path, dest: Path, digest: str) -> None:
    """Unpack ``archive`` (whose sha256 is ``digest``) beside ``dest``, then move it onto ``dest`` and
    write the stamp.

    Lone entries are descended into: an archive holding one file (at any depth) installs that file as
    ``dest``; one holding a single top-level folder installs that folder's contents.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        _unpack(entry, archive, tmp, dest.name)
        node = tmp
        while node.is_dir() and len(children := list(node.iterdir())) == 1:
            node = children[0]
        if node.is_dir() and not any(node.iterdir()):
            raise WeightsError(f"{entry.name}: archive {archive} ({entry.url}) is empty")
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(node, dest)
        with atomic_path(_stamp_path(dest)) as stamp_tmp:
            stamp_tmp.write_text(digest + "\n")
        logger.info("%s: unpacked %s archive into %s", entry.name, entry.extract, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _unpack(entry: WeightEntry, archive: Path, into: Path, file_name: str) -> None:
    where = f"{entry.name}: archive {archive} ({entry.url})"
    try:
        if entry.extract == "zip":
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    parts = PurePosixPath(member.replace("\\", "/")).parts
                    if member.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", member):
                        raise WeightsError(f"{where}: member {member!r} would land outside the folder")
                zf.extractall(into)
        elif entry.extract == "tar":
            with tarfile.open(archive, "r:*") as tf:
                # The "data" filter refuses absolute paths, '..', links out of the tree and devices.
                tf.extractall(into, filter="data")
        elif entry.extract == "bz2":
            with bz2.open(archive, "rb") as src, open(into / file_name, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK_BYTES)
        else:
            raise WeightsError(f"{entry.name}: unknown extract method {entry.extract!r}")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        raise WeightsError(f"{where}: cannot unpack as {entry.extract}: {err}") from err


def state_dict_problems(
    state: Mapping[str, Any], expected: Mapping[str, Any], *, optional: Iterable[str] = (), shown: int = 4
) -> list[str]:
    """Why a loaded state dict does not fit a module: one sentence per kind of mismatch (missing keys,
    unexpected keys, shape mismatches, each with its first ``shown`` names), or [] when it fits.

    state, expected: name -> tensor (anything with ``.shape``); ``optional`` keys may be missing.
    """

    def first(items: list[str]) -> str:
        return ", ".join(items[:shown]) + (f", ... ({len(items) - shown} more)" if len(items) > shown else "")

    optional = set(optional)
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {first(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {first(wrong)}")
    return problems


def read_state_dict(path: str | os.PathLike[str], *, what: str, source: str) -> dict[str, Any]:
    """The tensors of a PyTorch checkpoint, read safely (``torch.load(weights_only=True)``).

    Accepts a bare state dict or a dict whose ``"state_dict"`` holds one, with keys optionally prefixed
    ``module.`` (a DataParallel save). ``what`` names the network in errors, ``source`` says where users
    get the file. Raises FileNotFoundError (missing file, with ``source``) or ValueError naming ``path``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}; {source}")
    # A file installed from the default manifest is checked against its entry's digest, if it has one.
    pinned = (
        pinned_sha256(path, DEFAULT_WEIGHTS_DIR, DEFAULT_MANIFEST) if DEFAULT_MANIFEST.is_file() else None
    )
    verify_weights(path, pinned, fetch_hint=source)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean "not a usable file"
        raise ValueError(f"{path}: cannot read as a torch checkpoint ({type(exc).__name__}: {exc})") from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors ({what})")
    return {k.removeprefix("module."): v for k, v in state.items()}

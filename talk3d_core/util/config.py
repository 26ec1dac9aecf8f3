"""Validating the workflow configuration and the subjects table against their JSON Schemas.

Errors name the offending key (``ingest.fps``) or file and row, and are raised while the workflow
is parsed, before any job runs.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

from talk3d_core.util.io import file_problem
from talk3d_core.util.media import still_image_kind

T = TypeVar("T")
# A driving audio's id (its file name without extension) names results/<subject>/drive/<id>.mp4 and
# must match the workflow's {audio} wildcard; file system names stop at 255 bytes, hence the limits.
AUDIO_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_ID_LENGTH = 64


class ConfigError(ValueError):
    """The configuration or the subjects table is invalid; the message names the key or file."""


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML JSON-Schema file."""
    with open(path) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(instance: dict[str, Any], schema: Mapping[str, Any]) -> None:
    """Insert the schema's ``default`` values for missing keys, recursing into nested objects."""
    if not isinstance(instance, dict):  # e.g. render.views: none
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and "properties" in sub:
            _fill_defaults(instance[key], sub)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        # The offending key is not in the path; jsonschema names it in the message only.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts.append(",".join(extra))
    elif error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        parts.append(",".join(missing))
    return ".".join(parts) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "unknown key (check the spelling against workflow/schemas/)"
    if error.validator == "required":
        return "required but missing"
    return error.message


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any], *, source: str = "config") -> dict:
    """Return a copy of ``config`` with defaults filled in, or raise :class:`ConfigError`.

    Every validation error is listed, each as ``<source>: key 'a.b': problem``.
    """
    filled = copy.deepcopy(dict(config))
    _fill_defaults(filled, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    lines = [f"{source}: key '{_key_path(e)}': {_describe(e)}" for e in errors]
    # JSON Schema's numbers admit NaN and infinity (YAML's .nan, .inf); no setting means either.
    lines += [f"{source}: key '{key}': {value} is not a finite number" for key, value in _non_finite(filled)]
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(sorted(lines)))
    return filled


def _non_finite(node: Any, path: str = "") -> Iterable[tuple[str, float]]:
    """(key path, value) of every NaN or infinite float in a nested config."""
    if isinstance(node, float) and not math.isfinite(node):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _non_finite(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _non_finite(value, f"{path}[{i}]")


def check_overrides(config: Mapping[str, Any], subjects: Iterable[str]) -> None:
    """Every ``overrides.<name>`` must name a subject of the table: a typo would otherwise run that
    subject with the default (full) budgets without a word."""
    known = list(subjects)
    unknown = sorted(set(config.get("overrides") or {}) - set(known))
    if unknown:
        raise ConfigError(
            f"config overrides: {', '.join(repr(u) for u in unknown)} "
            f"{'is not a subject' if len(unknown) == 1 else 'are not subjects'} of the subjects table "
            f"(known: {', '.join(known) or 'none'})"
        )


def merge_settings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings merged key by key; anything else in ``over`` replaces ``base``'s value."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def subject_config(config: Mapping[str, Any], name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``overrides[name]`` merged in (e.g. a smaller step budget for the demo),
    validated again so an override with an unknown key or a wrong type fails naming it."""
    over = config.get("overrides", {}).get(name)
    if not over:
        return dict(config)
    return validate_config(merge_settings(config, over), schema, source=f"config overrides.{name}")


@dataclass(frozen=True)
class Subject:
    """One row of the subjects table; paths as written in the table."""

    name: str
    video: str
    audio: str | None = None
    drive: dict[str, str] = field(default_factory=dict)  # driving-audio id -> path
    notes: str | None = None


def load_subjects(
    table: str | os.PathLike[str],
    schema: Mapping[str, Any],
    *,
    generated: Iterable[str] = (),
) -> dict[str, Subject]:
    """Read and validate the subjects TSV; return subjects by name.

    ``generated`` lists paths that a workflow rule creates (the demo clip), which need not exist
    yet. Every other video, audio and driving-audio path must exist.
    """
    table = Path(table)
    if not table.is_file():
        raise ConfigError(f"subjects table {table} does not exist (config key 'subjects')")
    with open(table, newline="") as fh:
        reader = csv.DictReader(
            (line for line in fh if line.strip() and not line.startswith("#")), delimiter="\t"
        )
        rows = list(reader)
        header = [c.strip() for c in reader.fieldnames or []]
    known = schema.get("properties", {})
    unknown = [c for c in header if c not in known]
    if unknown:
        raise ConfigError(
            f"{table}: unknown column(s) {', '.join(map(repr, unknown))}; known columns: {', '.join(known)}"
        )
    if not rows:
        raise ConfigError(f"{table}: no subjects (expected a header line and one row per subject)")
    generated = {os.path.normpath(p) for p in generated}
    validator = jsonschema.Draft202012Validator(schema)
    subjects: dict[str, Subject] = {}
    problems: list[str] = []
    for lineno, row in enumerate(rows, start=2):
        if None in row:
            problems.append(f"{table} row {lineno}: more cells than header columns")
            continue
        # Empty cells mean "not given": drop them so `required` reports a missing video by name.
        record = {k.strip(): v.strip() for k, v in row.items() if v is not None and v.strip()}
        row_errors = [
            f"{table} row {lineno}: column '{_key_path(e)}': {_describe(e)}"
            for e in validator.iter_errors(record)
        ]
        if row_errors:
            problems.extend(row_errors)
            continue
        name = record["name"]
        if name in subjects:
            problems.append(f"{table} row {lineno}: duplicate subject name '{name}'")
            continue
        drive: dict[str, str] = {}
        for path in (record.get("drive") or "").split(","):
            path = path.strip()
            if not path:
                continue
            audio_id = Path(path).stem
            if not re.fullmatch(AUDIO_ID_PATTERN, audio_id) or len(audio_id) > MAX_ID_LENGTH:
                problems.append(
                    f"{table} row {lineno} (subject '{name}'): driving audio {path}: its name "
                    f"'{audio_id}' names results/{name}/drive/{audio_id}.mp4, so it must start with a "
                    f"letter or digit, hold only letters, digits, '_', '.' and '-', and be at most "
                    f"{MAX_ID_LENGTH} characters; rename the file"
                )
                continue
            if audio_id in drive:
                problems.append(
                    f"{table} row {lineno}: two driving audio files named '{audio_id}' "
                    f"({drive[audio_id]} and {path}); rename one"
                )
            drive[audio_id] = path
        for column, path in [("video", record["video"]), ("audio", record.get("audio"))] + [
            ("drive", p) for p in drive.values()
        ]:
            if not path or os.path.normpath(path) in generated:
                continue
            problem = file_problem(path)
            image = still_image_kind(path) if column == "video" and problem is None else None
            if image is not None:
                problem = f"is a still image ({image}), not a video; a talking clip is needed"
            if problem is not None:
                problems.append(f"{table} row {lineno} (subject '{name}'): {column} file {path} {problem}")
        subjects[name] = Subject(
            name=name,
            video=record["video"],
            audio=record.get("audio"),
            drive=drive,
            notes=record.get("notes"),
        )
    if problems:
        raise ConfigError("invalid subjects table:\n  " + "\n  ".join(problems))
    return subjects


def novel_view_names(views: Mapping[str, Any] | str) -> list[str]:
    """The novel-view grid of config ``render.views`` as view ids "<yaw>_<pitch>" (degrees), every
    yaw with every pitch; ``"none"`` (no novel views, said on purpose) gives none."""
    if views == "none":
        return []
    return [f"{yaw}_{pitch}" for yaw in views["yaw"] for pitch in views["pitch"]]


def subject_outputs(name: str, drive: Iterable[str], views: Iterable[str]) -> list[str]:
    """Everything the workflow produces for subject ``name`` driven by audio ids ``drive`` and seen
    from ``views`` (:func:`novel_view_names`): the targets of ``snakemake`` and ``talk3d run``."""
    base = f"results/{name}"
    stages = [
        "meta.json", "ingest_preview.png", "camera.parquet", "masks", "preprocess_sheet.png",
        "features.parquet", "prior/P_id.pt", "train/deltaplane.pt", "train/ablation.json", "video.mp4",
        "depth.mp4", "metrics.parquet", "videos.html",
    ]  # fmt: skip
    return (
        [f"{base}/{stage}" for stage in stages]
        + [f"{base}/drive/{audio}.mp4" for audio in drive]
        + [f"{base}/views/{view}.mp4" for view in views]
    )


def from_settings(cls: type[T], section: Mapping[str, Any]) -> T:
    """The config dataclass ``cls`` built from a validated config section: every field of ``cls``
    from the section's key of the same name (the schema gives every key a default)."""
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in section]
    if missing:
        raise ConfigError(f"{cls.__name__}: the config section has no {', '.join(missing)}")
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})

"""The ``talk3d`` command: add a subject, run its workflow, and re-drive or re-view a trained portrait.

``talk3d drive``, ``view`` and ``frame`` render from the trained model's files directly
(:mod:`talk3d_core.portrait`): no Snakemake, so no stage is ever re-run or retrained, and nothing is
written but the output file. ``add`` and ``run`` edit and run the workflow of the working directory
(``-C``, default the current one: the repository root, where ``workflow/Snakefile`` is).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from talk3d_core.camera import VIEW_CONVENTIONS
from talk3d_core.portrait import DRIVE_CAMERAS, Portrait
from talk3d_core.render import view_name
from talk3d_core.util.config import (
    ConfigError,
    load_schema,
    load_subjects,
    merge_settings,
    novel_view_names,
    subject_config,
    subject_outputs,
    validate_config,
)
from talk3d_core.util.io import atomic_path, file_problem

SUBJECT_COLUMNS = ("name", "video", "audio", "drive", "notes")
# Paths a workflow rule generates (the demo subject), which the subjects table may name before they exist.
GENERATED = ("resources/demo/astronaut.mp4", "resources/demo/speech.wav")


class Workspace:
    """A workflow directory: its validated config (config/config.yaml plus overlays) and subjects."""

    def __init__(self, root: Path, configfiles: Sequence[Path] = (), cwd: Path | None = None) -> None:
        self.root = root
        self.cwd = cwd or Path.cwd()  # where relative paths on the command line start from
        if not (root / "workflow" / "Snakefile").is_file():
            raise click.ClickException(
                f"{root} is not a Talk3D workflow directory (no workflow/Snakefile); run talk3d from the "
                "repository root or pass -C <repository root>"
            )
        self.schemas = root / "workflow" / "schemas"
        self.configfiles = [root / "config" / "config.yaml", *configfiles]
        merged: dict[str, Any] = {}
        for path in self.configfiles:
            try:
                layer = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise click.ClickException(f"config file {path}: {exc}") from None
            if not isinstance(layer, dict):
                raise click.ClickException(f"config file {path}: expected a mapping of settings")
            merged = merge_settings(merged, layer)
        self.schema = load_schema(self.schemas / "config.schema.yaml")
        try:
            self.config = validate_config(merged, self.schema)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None

    @property
    def subjects_table(self) -> Path:
        return self.root / self.config["subjects"]

    def subjects(self) -> dict:
        try:
            return load_subjects(
                self.subjects_table, load_schema(self.schemas / "subjects.schema.yaml"), generated=GENERATED
            )
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None

    def user_path(self, path: Path) -> Path:
        """A path given on the command line, absolute (the command runs in the workflow directory)."""
        return (self.cwd / path).resolve()

    def table_path(self, path: Path) -> str:
        """A path given on the command line as the subjects table holds it: relative to the workflow
        directory when inside it, else absolute."""
        absolute = self.user_path(path)
        try:
            return str(absolute.relative_to(self.root))
        except ValueError:
            return str(absolute)

    def settings(self, name: str) -> dict[str, Any]:
        """Subject ``name``'s settings (its ``overrides`` merged in)."""
        return subject_config(self.config, name, self.schema)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C", "--directory", "root", type=click.Path(file_okay=False, exists=True, path_type=Path), default=".",
    help="The workflow directory (repository root). Default: the current directory.",
)  # fmt: skip
@click.option(
    "--configfile", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Config overlay on config/config.yaml, as snakemake's --configfile (e.g. config/paper.yaml).",
)  # fmt: skip
@click.pass_context
def main(ctx: click.Context, root: Path, configfile: tuple[Path, ...]) -> None:
    """Talk3D talking portraits: add a subject, train it, re-drive it with any audio."""
    root = root.resolve()
    ctx.obj = Workspace(root, [p.resolve() for p in configfile], cwd=Path.cwd())
    # Paths in the config and the subjects table are relative to the workflow directory.
    os.chdir(root)


@main.command()
@click.argument("name")
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--audio", type=click.Path(path_type=Path), help="Separate audio track for VIDEO.")
@click.option("--drive", default="", help="Comma-separated driving audio files.")
@click.option("--notes", default="", help="Free text: source, licence.")
@click.pass_obj
def add(ws: Workspace, name: str, video: Path, audio: Path | None, drive: str, notes: str) -> None:
    """Add subject NAME with its talking clip VIDEO to the subjects table (checked first)."""
    table = ws.subjects_table
    row = {
        "name": name,
        "video": ws.table_path(video),
        "audio": ws.table_path(audio) if audio else "",
        "drive": ",".join(ws.table_path(Path(p.strip())) for p in drive.split(",") if p.strip()),
        "notes": " ".join(notes.split()),  # tabs and newlines would break the row
    }
    header, rows = list(SUBJECT_COLUMNS), []
    if table.is_file():
        with open(table, newline="") as fh:
            lines = [line for line in fh if line.strip() and not line.startswith("#")]
        reader = csv.DictReader(lines, delimiter="\t")
        header = [c.strip() for c in reader.fieldnames or SUBJECT_COLUMNS]
        rows = list(reader)
        if any((r.get("name") or "").strip() == name for r in rows):
            raise click.ClickException(f"{table}: subject '{name}' is already there; pick another name")
        header += [c for c in SUBJECT_COLUMNS if c not in header and row[c]]
    text = io.StringIO()
    writer = csv.DictWriter(text, header, delimiter="\t", lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows([*rows, row])
    table.parent.mkdir(parents=True, exist_ok=True)
    candidate = table.with_name(f".{table.name}.new")
    candidate.write_text(text.getvalue())
    try:
        load_subjects(candidate, load_schema(ws.schemas / "subjects.schema.yaml"), generated=GENERATED)
    except ConfigError as exc:
        candidate.unlink()
        raise click.ClickException(str(exc).replace(str(candidate), str(table))) from None
    candidate.replace(table)  # a rename in one folder: readers see the old table or the new one
    click.echo(f"added '{name}' to {table}; train it with: talk3d run {name}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name")
@click.argument("snakemake_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run(ws: Workspace, name: str, snakemake_args: tuple[str, ...]) -> None:
    """Run the workflow for subject NAME: every output of it (extra arguments go to snakemake)."""
    subjects = ws.subjects()
    if name not in subjects:
        raise click.ClickException(f"no subject '{name}' in {ws.subjects_table}; add it with talk3d add")
    views = novel_view_names(ws.settings(name)["render"]["views"])
    targets = subject_outputs(name, subjects[name].drive, views)
    args = list(snakemake_args)
    if not any(a.split("=")[0] in ("-c", "--cores", "-j", "--jobs", "--profile") for a in args):
        args = ["--cores", "all", *args]
    for path in ws.configfiles[1:]:
        args += ["--configfile", str(path)]
    command = [sys.executable, "-m", "snakemake", *args, "--", *targets]  # "--": options may take lists
    click.echo(" ".join(command[1:]), err=True)
    raise SystemExit(subprocess.call(command))


def _open_portrait(name: str, device: str | None) -> Portrait:
    try:
        return Portrait.open(name, device=device)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _input_file(ws: Workspace, path: Path, what: str) -> Path:
    path = ws.user_path(path)
    problem = file_problem(path)
    if problem is not None:
        raise click.ClickException(f"{what} {path} {problem}")
    return path


def _check_view(yaw: float, pitch: float) -> None:
    try:
        view_name(yaw, pitch)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


device_option = click.option(
    "--device", default=None, help="torch device (default: cuda when present, else cpu)"
)
size_option = click.option(
    "--size",
    type=click.IntRange(min=16),
    default=None,
    help="Output side in pixels (default: render.output_size).",
)


def output_option(what: str) -> Any:
    return click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"{what} to write.",
    )


def view_options(command: Any) -> Any:
    """--yaw, --pitch and --convention: a novel view, degrees, as head angles or LookAt offsets."""
    command = click.option(
        "--convention", type=click.Choice(VIEW_CONVENTIONS), default=None,
        help="head: --yaw/--pitch are the head angles seen; lookat: Talk3D's EG3D LookAt camera offsets "
        "(yaw 30, pitch 20 show head yaw -32, pitch 15) (default: render.view_convention).",
    )(command)  # fmt: skip
    command = click.option("--pitch", type=float, required=True, help="Pitch in degrees.")(command)
    yaw_help = "Yaw in degrees (head convention: + turns the head to the subject's left)."
    return click.option("--yaw", type=float, required=True, help=yaw_help)(command)


def _render(call: Any, *args: Any, **kwargs: Any) -> None:
    """Run a Portrait render, turning a bad input into a clear error, then print its summary."""
    try:
        summary = call(*args, **kwargs)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    width, height = summary["size"]
    click.echo(
        f"{summary['video']}: {summary['frames']} frames {width}x{height} in {summary['seconds']:.1f} s "
        f"(the model renders {summary['render_fps']:.1f} frames/s)"
    )


@main.command()
@click.argument("name")
@click.argument("audio", type=click.Path(path_type=Path))
@output_option("Video (mp4)")
@click.option(
    "--camera", type=click.Choice(DRIVE_CAMERAS), default=None,
    help="tracked: the held-out frames' head motion; fixed: frontal (default: render.drive_camera).",
)  # fmt: skip
@click.option(
    "--paste-back/--no-paste-back",
    default=None,
    help="Composite into the full source frames (default: render.paste_back).",
)
@size_option
@device_option
@click.pass_obj
def drive(
    ws: Workspace, name: str, audio: Path, output: Path, camera: str | None, paste_back: bool | None,
    size: int | None, device: str | None,
) -> None:  # fmt: skip
    """Render trained subject NAME driven by AUDIO (wav, mp3, m4a, flac, ogg or a video's sound)."""
    audio = _input_file(ws, audio, "audio file")
    render = ws.settings(name)["render"]
    portrait = _open_portrait(name, device)
    _render(
        portrait.drive, audio, ws.user_path(output), camera=camera or render["drive_camera"],
        paste_back=render["paste_back"] if paste_back is None else paste_back,
        size=size or render["output_size"], audio_rate=ws.config["ingest"]["audio_rate"],
        batch_size=render["batch_size"], crf=render["crf"],
    )  # fmt: skip


@main.command()
@click.argument("name")
@view_options
@output_option("Video (mp4)")
@size_option
@device_option
@click.pass_obj
def view(
    ws: Workspace, name: str, yaw: float, pitch: float, convention: str | None, output: Path,
    size: int | None, device: str | None,
) -> None:  # fmt: skip
    """Render trained subject NAME's held-out frames, with their audio, from a novel view."""
    _check_view(yaw, pitch)
    render = ws.settings(name)["render"]
    portrait = _open_portrait(name, device)
    _render(
        portrait.view, yaw, pitch, ws.user_path(output), convention=convention or render["view_convention"],
        size=size or render["output_size"], batch_size=render["batch_size"], crf=render["crf"],
    )  # fmt: skip


@main.command()
@click.argument("name")
@view_options
@click.option(
    "--frame", "index", type=int, default=None, help="Clip frame (default: the first held-out one)."
)
@output_option("Picture (png)")
@size_option
@device_option
@click.pass_obj
def frame(
    ws: Workspace, name: str, yaw: float, pitch: float, convention: str | None, index: int | None,
    output: Path, size: int | None, device: str | None,
) -> None:  # fmt: skip
    """Render one frame of trained subject NAME from a yaw/pitch, as a PNG."""
    from PIL import Image

    _check_view(yaw, pitch)
    render = ws.settings(name)["render"]
    portrait = _open_portrait(name, device)
    try:
        image = portrait.frame(
            yaw, pitch, index, convention=convention or render["view_convention"],
            size=size or render["output_size"],
        )  # fmt: skip
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    output = ws.user_path(output)
    with atomic_path(output) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    click.echo(f"{output}: {image.shape[1]}x{image.shape[0]}")


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback: this machine)."
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--max-upload-mb", default=50.0, show_default=True, type=click.FloatRange(min=0.01), help="Upload cap."
)
@device_option
@click.pass_obj
def serve(ws: Workspace, host: str, port: int, max_upload_mb: float, device: str | None) -> None:
    """A local web page: drive the trained subjects with uploaded or recorded audio, turn their heads."""
    import uvicorn

    from talk3d_core.serve.app import Studio, make_app

    studio = Studio(
        ws.root / "results", device=device, audio_rate=ws.config["ingest"]["audio_rate"],
        max_upload_bytes=int(max_upload_mb * 2**20), batch_size=ws.config["render"]["batch_size"],
    )  # fmt: skip
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"talk3d serve: listening on {host}, so other machines can reach the page", err=True)
    count = len(studio.subjects())
    click.echo(f"talk3d serve: http://{host}:{port}/ ({count} trained subjects; Ctrl-C stops)")
    uvicorn.run(make_app(studio), host=host, port=port, log_level="warning")

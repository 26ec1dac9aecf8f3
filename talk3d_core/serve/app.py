"""The web page of ``talk3d serve``: trained portraits re-driven, re-viewed and streamed live.

A small Starlette app over :class:`talk3d_core.portrait.Portrait`. Routes:

- ``GET /``: the trained subjects; ``GET /s/<name>``: one subject's page (:mod:`.page`).
- ``POST /api/s/<name>/drive`` (form: ``audio`` file, ``camera``, ``size``): checks the upload (size
  limit, decodable audio) and queues a render; answers ``{"job": id}``.
- ``GET /api/jobs/<id>``: the job's state and frames done; ``GET /api/jobs/<id>/video``: its MP4.
- ``GET /api/s/<name>/frame?yaw=&pitch=&frame=&size=``: one frame as PNG (the view controls).
- ``POST /api/s/<name>/live`` (form as for drive): the frames as they render, a stream of records
  ``[4-byte big-endian length][payload]``: first a JSON header ``{"frames", "fps", "size"}``, then
  one JPEG per frame.

Renders share the machine's cores, so they run one at a time (a lock around the model); each job
writes into its own folder, so several browser tabs never touch each other's files. Uploads are
limited in size and decoded by the ingest before any render starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from talk3d_core.ingest import ingest_audio
from talk3d_core.portrait import DRIVE_CAMERAS, Portrait, PortraitFiles
from talk3d_core.render import view_name
from talk3d_core.serve.page import index_page, subject_page

log = logging.getLogger(__name__)

#: Largest accepted upload (bytes) unless the server is told otherwise: about 10 minutes of WAV.
DEFAULT_MAX_UPLOAD = 50 * 2**20
#: How long a finished render stays downloadable (seconds).
KEEP_JOBS_S = 3600
#: Output sides offered on the page (pixels); the render's own side is always allowed too.
SIZES = (128, 256, 512)


class BadRequest(ValueError):
    """A request the page should explain to its user (HTTP 400, or ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One drive render: its own folder, progress and outcome."""

    id: str
    subject: str
    folder: Path
    state: str = "queued"  # queued, rendering, done, failed
    done: int = 0
    total: int = 0
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    @property
    def video(self) -> Path:
        return self.folder / f"{self.subject}_driven.mp4"

    def status(self) -> dict[str, Any]:
        out = {
            "job": self.id,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "error": self.error,
        }
        if self.state == "done":
            out["video"] = f"/api/jobs/{self.id}/video"
            out["seconds"] = self.summary.get("seconds")
        return out


class Studio:
    """The server's state: the subjects under ``results``, the loaded portraits, the render jobs."""

    def __init__(
        self,
        results: str | Path = "results",
        *,
        device: str | None = None,
        audio_rate: int = 16000,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
        batch_size: int = 8,
    ) -> None:
        self.results = Path(results)
        self.device = device
        self.audio_rate = audio_rate
        self.max_upload_bytes = max_upload_bytes
        self.batch_size = batch_size
        self.scratch = Path(tempfile.mkdtemp(prefix="talk3d_serve_"))
        self.jobs: dict[str, Job] = {}
        self._portraits: dict[str, Portrait] = {}
        self._model_lock = threading.Lock()  # one render at a time: they share the cores (and the model)
        self._load_lock = threading.Lock()
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talk3d-render")

    def close(self) -> None:
        self._queue.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------------------------ subjects

    def subjects(self) -> list[str]:
        """Names of the subjects under ``results`` whose trained files are all there."""
        names = []
        for folder in (
            sorted(p for p in self.results.iterdir() if p.is_dir()) if self.results.is_dir() else []
        ):
            try:
                PortraitFiles.of(folder.name, self.results).check()
            except FileNotFoundError:
                continue
            names.append(folder.name)
        return names

    def portrait(self, name: str) -> Portrait:
        if name not in self.subjects():
            raise BadRequest(f"no trained subject '{name}' under {self.results}", status=404)
        with self._load_lock:
            if name not in self._portraits:
                self._portraits[name] = Portrait.open(name, self.results, device=self.device)
            return self._portraits[name]

    # ------------------------------------------------------------------------------------- uploads

    async def upload(self, request: Request, folder: Path) -> tuple[Path, dict[str, str]]:
        """The form's ``audio`` file saved in ``folder``, decoded to 16 kHz mono WAV there, and the other
        fields. Too large (by its declared length or by what arrives) is 413; undecodable is 400."""
        declared = int(request.headers.get("content-length") or 0)
        if declared > self.max_upload_bytes + 64 * 1024:
            # Take in what the client is sending (up to the body backstop) before answering: a reply
            # sent mid-upload reaches a loaded client as a connection reset, not as a readable 413.
            if declared <= self.max_body_bytes:
                with contextlib.suppress(ClientDisconnect):
                    async for _ in request.stream():
                        pass
            raise BadRequest(
                f"upload of {declared / 2**20:.1f} MB is over the {self._limit_text()} limit", 413
            )
        form = await request.form(max_files=1, max_fields=8, max_part_size=self.max_upload_bytes)
        upload = form.get("audio")
        if upload is None or isinstance(upload, str):
            raise BadRequest("the form has no audio file (field 'audio')")
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / f"upload{Path(upload.filename or 'audio').suffix[:8]}"
        written = 0
        with open(source, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                written += len(chunk)
                if written > self.max_upload_bytes:
                    raise BadRequest(f"upload is over the {self._limit_text()} limit", 413)
                fh.write(chunk)
        if written == 0:
            raise BadRequest(f"the uploaded file {upload.filename!r} is empty")
        wav = folder / "audio.wav"
        try:
            await run_in_threadpool(ingest_audio, source, wav, audio_rate=self.audio_rate)
        except (ValueError, OSError) as exc:
            name = upload.filename or "the upload"
            reason = str(exc).replace(str(source), name)
            raise BadRequest(f"{name} is not audio this server can read: {reason}") from None
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return wav, fields

    @property
    def max_body_bytes(self) -> int:
        """Largest request body the app reads at all (twice the upload limit plus the form's other
        parts); bodies up to it reach :meth:`upload`, which explains the limit in JSON."""
        return 2 * self.max_upload_bytes + (1 << 20)

    def _limit_text(self) -> str:
        return f"{self.max_upload_bytes / 2**20:g} MB"

    def options(self, portrait: Portrait, fields: dict[str, str]) -> tuple[str, int]:
        camera = fields.get("camera", "tracked")
        if camera not in DRIVE_CAMERAS:
            raise BadRequest(f"camera must be one of {', '.join(DRIVE_CAMERAS)}, got {camera!r}")
        return camera, parse_size(fields.get("size"), portrait.size)

    # ---------------------------------------------------------------------------------------- jobs

    def submit(self, portrait: Portrait, wav: Path, folder: Path, camera: str, size: int) -> Job:
        self._forget_old_jobs()
        job = Job(secrets.token_hex(8), portrait.files.name, folder)
        self.jobs[job.id] = job

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        def work() -> None:
            job.state = "rendering"
            try:
                with self._model_lock:
                    job.summary = portrait.drive(
                        wav, job.video, camera=camera, size=size, audio_rate=self.audio_rate,
                        batch_size=self.batch_size, progress=False, on_frames=progress,
                    )  # fmt: skip
                job.state = "done"
            except Exception as exc:  # the page shows it; the server goes on
                log.exception("job %s failed", job.id)
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"

        self._queue.submit(work)
        return job

    def _forget_old_jobs(self) -> None:
        """Finished jobs older than :data:`KEEP_JOBS_S` lose their folder (video), so scratch stays small."""
        cutoff = time.time() - KEEP_JOBS_S
        for job in [j for j in self.jobs.values() if j.state in ("done", "failed") and j.created < cutoff]:
            shutil.rmtree(job.folder, ignore_errors=True)
            del self.jobs[job.id]

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise BadRequest(f"no job {job_id!r}", status=404)
        return job

    def new_folder(self) -> Path:
        folder = self.scratch / secrets.token_hex(8)
        folder.mkdir()
        return folder


def parse_size(text: str | None, default: int) -> int:
    if text in (None, ""):
        return default
    try:
        size = int(text)
    except ValueError:
        raise BadRequest(f"size must be a number of pixels, got {text!r}") from None
    if size not in (*SIZES, default):
        raise BadRequest(f"size must be one of {', '.join(map(str, sorted({*SIZES, default})))}, got {size}")
    return size


def parse_angle(request: Request, name: str) -> float:
    text = request.query_params.get(name, "0")
    try:
        return float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number of degrees, got {text!r}") from None


def _record(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_app(studio: Studio) -> Starlette:
    """The ASGI app serving ``studio``."""

    async def received(request: Request) -> tuple[Portrait, Path, Path, str, int]:
        """The subject, a new job folder, the checked upload in it and the form's options; a refused
        request leaves no folder behind."""
        portrait = await run_in_threadpool(studio.portrait, request.path_params["name"])
        folder = studio.new_folder()
        try:
            wav, fields = await studio.upload(request, folder)
            return (portrait, folder, wav, *studio.options(portrait, fields))
        except BadRequest:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def index(request: Request) -> Response:
        return HTMLResponse(index_page(studio.subjects(), str(studio.results)))

    async def subject(request: Request) -> Response:
        name = request.path_params["name"]
        portrait = await run_in_threadpool(studio.portrait, name)
        sizes = sorted({*SIZES, portrait.size})
        return HTMLResponse(subject_page(name, portrait.size, sizes, portrait.fps, studio.max_upload_bytes))

    async def drive(request: Request) -> Response:
        portrait, folder, wav, camera, size = await received(request)
        return JSONResponse(studio.submit(portrait, wav, folder, camera, size).status())

    async def job_status(request: Request) -> Response:
        return JSONResponse(studio.job(request.path_params["job"]).status())

    async def job_video(request: Request) -> Response:
        job = studio.job(request.path_params["job"])
        if job.state != "done":
            raise BadRequest(f"job {job.id} is {job.state}, it has no video yet", status=409)
        return FileResponse(job.video, media_type="video/mp4", filename=job.video.name)

    async def frame(request: Request) -> Response:
        portrait = await run_in_threadpool(studio.portrait, request.path_params["name"])
        yaw, pitch = parse_angle(request, "yaw"), parse_angle(request, "pitch")
        try:
            view_name(yaw, pitch)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        index = request.query_params.get("frame")
        size = parse_size(request.query_params.get("size"), portrait.size)

        def render() -> bytes:
            with studio._model_lock:
                image = portrait.frame(yaw, pitch, None if index in (None, "") else int(index), size=size)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            return buffer.getvalue()

        try:
            png = await run_in_threadpool(render)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def live(request: Request) -> Response:
        portrait, folder, wav, camera, size = await received(request)
        try:
            features = await run_in_threadpool(portrait.drive_features, wav, studio.audio_rate)
        except ValueError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise BadRequest(str(exc)) from None

        def records() -> Iterator[bytes]:
            try:
                header = {"frames": len(features), "fps": portrait.fps, "size": size}
                yield _record(json.dumps(header).encode())
                batch = studio.batch_size
                rendered = portrait.drive_frames(features, camera=camera, size=size, batch_size=batch)
                with studio._model_lock:
                    for image in rendered:
                        yield _record(_jpeg(image))
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return StreamingResponse(
            iterate_in_threadpool(records()), media_type="application/octet-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    routes = [
        Route("/", index),
        Route("/s/{name}", subject),
        Route("/api/s/{name}/drive", drive, methods=["POST"]),
        Route("/api/s/{name}/frame", frame),
        Route("/api/s/{name}/live", live, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/video", job_video),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        studio.close()

    return Starlette(
        routes=routes, exception_handlers={BadRequest: bad_request}, lifespan=lifespan,
        # A backstop for bodies without a declared length (a plain-text 413).
        max_body_size=studio.max_body_bytes,
    )  # fmt: skip

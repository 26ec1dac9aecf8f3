"""What the resumable trainers (prior, personalize, train) share: a checkpoint keyed by everything
that shapes the result, per-step seeding, a JSON-lines step log and a progress bar.

A run in ``out_dir`` keeps ``checkpoint.pt`` (atomic writes) and ``train_log.jsonl`` (one line per
step). A checkpoint is resumed only when its ``meta`` (settings, code hash, data fingerprints) equals
the new run's; checkpoints of other settings are parked in ``checkpoints/`` rather than deleted, so
switching back resumes them. Every step reseeds torch from (seed, step), so a killed run continued
later ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from talk3d_core.util.io import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
STEP_LOG = "train_log.jsonl"
PARKED = "checkpoints"  # checkpoints of other settings, by settings key and step count
# Periodic checkpoints at most this often (seconds; the environment variable overrides it): a
# paper-size personalization checkpoint is ~340 MB, and one every 50 steps wrote over a terabyte per
# clip. Stage ends and budget stops always save.
SAVE_INTERVAL_ENV = "TALK3D_CHECKPOINT_INTERVAL_S"
MIN_SAVE_INTERVAL_S = 300.0
PROGRESS_EVERY_S = 30.0  # a progress line in the stage's log at most (and, while busy, at least) this often


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given, else CUDA when it is available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def step_seed(seed: int, step: int, stage: int = 0) -> int:
    """The torch seed of one training step: batches and jitter are functions of (seed, stage, step)
    only, so a resumed run repeats the steps an uninterrupted one would have taken. ``stage``: the
    index of the stage of a multi-stage run whose steps count from 0 in each stage."""
    return (seed * 1_000_003 + stage * 2**40 + step) % (2**63)


def seed_step(seed: int, step: int, stage: int = 0) -> None:
    """Seed torch's global generator for ``step`` (see :func:`step_seed`)."""
    torch.manual_seed(step_seed(seed, step, stage))


def fingerprint(*arrays: np.ndarray | torch.Tensor | None, names: Sequence[str] = ()) -> str:
    """sha256 (16 hex digits) of names, shapes, dtypes and bytes of the arrays (None skipped)."""
    digest = hashlib.sha256(" ".join(names).encode())
    for array in arrays:
        if array is None:
            continue
        tensor = torch.as_tensor(array).detach().cpu().contiguous()
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def module_fingerprint(module: torch.nn.Module) -> str:
    """:func:`fingerprint` of a module's state dict (names and tensors)."""
    state = module.state_dict()
    return fingerprint(*(state[k] for k in sorted(state)), names=sorted(state))


def _settings_key(meta: dict[str, Any]) -> str:
    """16 hex digits naming a run's settings (its ``meta``) among the parked checkpoints."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def _park(out_dir: Path, state: dict[str, Any], step_key: str) -> Path:
    """Move ``checkpoint.pt`` and its step log into ``checkpoints/`` under its settings key and step,
    so switching back to those settings resumes it instead of starting over."""
    parked = out_dir / PARKED / f"{_settings_key(state['meta'])}-{int(state[step_key]):09d}"
    parked.parent.mkdir(exist_ok=True)
    os.replace(out_dir / CHECKPOINT, parked.with_suffix(".pt"))
    log_path = out_dir / STEP_LOG
    if log_path.is_file():
        os.replace(log_path, parked.with_suffix(".jsonl"))
    return parked.with_suffix(".pt")


def _unpark(out_dir: Path, meta: dict[str, Any], total: int) -> Path | None:
    """Move back the parked checkpoint of ``meta``'s settings that ran the most steps, at most
    ``total``; returns where it was parked, or None when there is none."""
    key = _settings_key(meta)
    found = []
    for path in (out_dir / PARKED).glob(f"{key}-*.pt"):
        steps = path.stem.rpartition("-")[2]
        if steps.isdigit() and int(steps) <= total:
            found.append((int(steps), path))
    if not found:
        return None
    _, path = max(found)
    os.replace(path, out_dir / CHECKPOINT)
    log_path = path.with_suffix(".jsonl")
    if log_path.is_file():
        os.replace(log_path, out_dir / STEP_LOG)
    else:
        (out_dir / STEP_LOG).unlink(missing_ok=True)
    return path


def _load(checkpoint: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(checkpoint, map_location=device, weights_only=True)


def open_checkpoint(
    out_dir: Path,
    meta: dict[str, Any],
    restart_on_mismatch: bool,
    device: torch.device,
    *,
    step_key: str,
    total: int,
) -> dict[str, Any] | None:
    """The state to resume from (``out_dir/checkpoint.pt``), or None to start over.

    A checkpoint resumes only when its ``meta`` equals ``meta`` (settings, code, data) and it ran at
    most ``total`` steps (more would pass a longer-trained model off as the result of fewer). Any
    other checkpoint is an error, or with ``restart_on_mismatch`` it is parked in ``checkpoints/``
    under its settings and step count (never deleted), and a parked checkpoint of ``meta``'s own
    settings is brought back when there is one. The lines of ``train_log.jsonl`` past the resumed
    ``state[step_key]`` are dropped, as those steps run again; without a checkpoint the log is deleted.
    """
    checkpoint, log_path = out_dir / CHECKPOINT, out_dir / STEP_LOG
    state = _load(checkpoint, device) if checkpoint.is_file() else None
    if state is not None:
        same = json.dumps(state["meta"], sort_keys=True) == json.dumps(meta, sort_keys=True)
        ran = state[step_key]
        if not same or ran > total:
            why = f"trained for {ran} steps, {total} asked" if same else "written with other settings"
            if not restart_on_mismatch:
                raise ValueError(f"{checkpoint}: {why}; delete it (or allow a restart) to start over")
            parked = _park(out_dir, state, step_key)
            log.info("%s: %s; kept as %s (these settings again resume it)", checkpoint, why, parked)
            state = None
    if state is None:
        parked = _unpark(out_dir, meta, total)
        if parked is not None:
            log.info("%s: resuming the checkpoint of these settings parked as %s", checkpoint, parked)
            state = _load(checkpoint, device)
    if state is None:
        log_path.unlink(missing_ok=True)
        return None
    log.info("resuming from %s at %s %d", checkpoint, step_key, state[step_key])
    if log_path.is_file():
        lines = log_path.read_text().splitlines()
        kept = [r for r in lines if json.loads(r)[step_key] <= state[step_key]]
        if len(kept) < len(lines):
            log_path.write_text("".join(r + "\n" for r in kept))
    return state


class Progress:
    """Progress lines for a stage's log, which has no progress bar (Snakemake, SLURM):
    "<desc>: <unit> n/N, x s/<unit>, about m min left (<doing>)" at most once per ``every_s``
    seconds (default :data:`PROGRESS_EVERY_S`), the rate measured since the progress began at
    ``start``."""

    def __init__(
        self, desc: str, total: int, *, unit: str = "step", start: int = 0, every_s: float | None = None
    ) -> None:
        self.desc, self.total, self.unit, self.start, self.every_s = desc, total, unit, start, every_s
        self.done = start
        self._opened = self._last = time.monotonic()

    def advance(self, n: int = 1, doing: str = "") -> None:
        """``n`` more units are finished (see :meth:`update`)."""
        self.update(self.done + n, doing)

    def update(self, done: int, doing: str = "") -> None:
        """``done`` units of ``total`` are finished; ``doing``: what the stage is at (in the line)."""
        self.done = done
        now = time.monotonic()
        every = PROGRESS_EVERY_S if self.every_s is None else self.every_s
        if now - self._last < every:
            return
        rate = (now - self._opened) / max(done - self.start, 1)
        log.info(
            "%s: %s %d/%d, %.3g s/%s, about %.0f min left%s",
            self.desc, self.unit, done, self.total, rate, self.unit, rate * (self.total - done) / 60,
            f" ({doing})" if doing else "",
        )  # fmt: skip
        self._last = now


def map_batches(
    fn: Callable[[np.ndarray], np.ndarray],
    items: np.ndarray,
    batch_size: int,
    progress: Progress | None = None,
    doing: str = "",
) -> np.ndarray:
    """``fn`` over ``items`` (N, ...) in batches of ``batch_size`` along the first axis, the results
    (B, ...) concatenated (N, ...); each batch advances ``progress`` by its length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(items) == 0:
        raise ValueError("map_batches: no items")
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        out.append(np.asarray(fn(batch)))
        if progress is not None:
            progress.advance(len(batch), doing)
    return np.concatenate(out)


class Run:
    """One resumable training run in ``out_dir``.

    ``state`` is the checkpoint to resume (None: start over; see :func:`open_checkpoint`). Inside
    ``with run:`` each :meth:`step` appends a JSON line to ``train_log.jsonl`` and advances the progress
    bar (``progress`` None: on when stderr is a terminal); :meth:`save` writes ``checkpoint.pt``
    atomically with the run's meta, after flushing the log.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        meta: dict[str, Any],
        *,
        total: int,
        device: torch.device,
        restart_on_mismatch: bool = False,
        step_key: str = "step",
        desc: str = "train",
        progress: bool | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.meta, self.total, self.step_key = meta, total, step_key
        self.checkpoint = self.out_dir / CHECKPOINT
        self.state = open_checkpoint(
            self.out_dir, meta, restart_on_mismatch, device, step_key=step_key, total=total
        )
        self.start = 0 if self.state is None else int(self.state[step_key])
        self._desc, self._progress = desc, progress
        self._log: IO[str] | None = None
        self._bar: Any = None
        self._opened = self._last_save = time.monotonic()
        self._progress_log = Progress(desc, total, start=self.start)
        self.saves, self.bytes_written = 0, 0

    def __enter__(self) -> Run:
        from tqdm import tqdm

        # Line-buffered: the step log shows progress as it happens (SLURM jobs have no progress bar).
        self._log = open(self.out_dir / STEP_LOG, "a", buffering=1)  # noqa: SIM115 (closed in __exit__)
        disable = None if self._progress is None else not self._progress
        self._bar = tqdm(total=self.total, initial=self.start, disable=disable, desc=self._desc)
        return self

    def __exit__(self, *exc: object) -> None:
        hours = (time.monotonic() - self._opened) / 3600
        if self.saves:
            log.info(
                "%s: %d checkpoints, %.1f MB written in %.2f h (%.0f MB per hour)", self.checkpoint,
                self.saves, self.bytes_written / 1e6, hours, self.bytes_written / 1e6 / max(hours, 1e-9),
            )  # fmt: skip
        if self._bar is not None:
            self._bar.close()
        if self._log is not None:
            self._log.close()
        self._log = self._bar = None

    def step(self, record: dict[str, Any]) -> None:
        """Log one finished step (``record`` holds ``step_key`` and the loss values)."""
        assert self._log is not None, "Run.step outside 'with run:'"
        self._log.write(json.dumps(record) + "\n")
        self._bar.update(1)
        self._progress_log.update(int(record[self.step_key]))  # a log line for runs without a terminal

    def due(self) -> bool:
        """Whether a periodic checkpoint may be written now: at most one per
        :data:`MIN_SAVE_INTERVAL_S` seconds (or ``$TALK3D_CHECKPOINT_INTERVAL_S``), so the bytes written
        per hour stay bounded whatever the step rate (a kill loses at most that much work; every step
        reseeds, so resuming is exact)."""
        interval = float(os.environ.get(SAVE_INTERVAL_ENV, MIN_SAVE_INTERVAL_S))
        return time.monotonic() - self._last_save >= interval

    def save(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` (``state`` plus the run's meta), the log flushed first so the log
        never runs behind the checkpoint."""
        if self._log is not None:
            self._log.flush()
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state | {"meta": self.meta}, tmp)
        self._last_save = time.monotonic()
        self.saves += 1
        self.bytes_written += self.checkpoint.stat().st_size


def check_finite(
    terms: dict[str, Any], values: Sequence[float], what: str, step: int, checkpoint: Path
) -> None:
    """Stop on a non-finite loss, naming the terms and, when it exists, the checkpoint that holds the
    last good state."""
    if not np.isfinite(values).all():
        bad = [k for k, v in zip(terms, values, strict=True) if not np.isfinite(v)]
        kept = (
            f"{checkpoint} holds the last good state"
            if checkpoint.is_file()
            else f"no checkpoint was written yet in {checkpoint.parent}"
        )
        raise FloatingPointError(f"{what} diverged at step {step} (non-finite {', '.join(bad)}); {kept}")

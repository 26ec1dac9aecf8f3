"""What the resumable trainers (prior, personalize, train) share: a checkpoint keyed by everything
that shapes the result, per-step seeding, a JSON-lines step log and a progress bar.

A run in ``out_dir`` keeps ``checkpoint.pt`` (atomic writes) and ``train_log.jsonl`` (one line per
step). A checkpoint is resumed only when its ``meta`` (settings, code hash, data fingerprints) equals
the new run's; every step reseeds torch from (seed, step), so a killed run continued later ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from talk3d_core.util.io import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
STEP_LOG = "train_log.jsonl"


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


def open_checkpoint(
    out_dir: Path, meta: dict[str, Any], restart_on_mismatch: bool, device: torch.device, *, step_key: str
) -> dict[str, Any] | None:
    """The state in ``out_dir/checkpoint.pt`` to resume from, or None to start over.

    A checkpoint resumes only when its ``meta`` equals ``meta`` (settings, code, data); the lines of
    ``train_log.jsonl`` past its ``state[step_key]`` are dropped, as those steps run again. Another
    meta is an error, or with ``restart_on_mismatch`` the file is set aside as
    ``checkpoint.stale.pt``. Without a checkpoint to resume, the log is deleted.
    """
    checkpoint, log_path = out_dir / CHECKPOINT, out_dir / STEP_LOG
    if not checkpoint.is_file():
        log_path.unlink(missing_ok=True)
        return None
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    if json.dumps(state["meta"], sort_keys=True) != json.dumps(meta, sort_keys=True):
        if not restart_on_mismatch:
            raise ValueError(f"{checkpoint}: written with other settings; delete it to start over")
        log.info("%s was written with other settings or code: starting over", checkpoint)
        os.replace(checkpoint, out_dir / "checkpoint.stale.pt")
        log_path.unlink(missing_ok=True)
        return None
    log.info("resuming from %s at %s %d", checkpoint, step_key, state[step_key])
    if log_path.is_file():
        lines = log_path.read_text().splitlines()
        kept = [r for r in lines if json.loads(r)[step_key] <= state[step_key]]
        if len(kept) < len(lines):
            log_path.write_text("".join(r + "\n" for r in kept))
    return state


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
        self.state = open_checkpoint(self.out_dir, meta, restart_on_mismatch, device, step_key=step_key)
        self.start = 0 if self.state is None else int(self.state[step_key])
        if self.start > total:
            # Trained further than now asked: resuming would hand on the longer-trained model as the
            # result of fewer steps. Start over (or stop, without restart_on_mismatch).
            if not restart_on_mismatch:
                asked = f"trained for {self.start} steps, {total} asked"
                raise ValueError(f"{self.checkpoint}: {asked}; delete it to start over")
            log.info("%s holds %d steps, %d asked: starting over", self.checkpoint, self.start, total)
            os.replace(self.checkpoint, self.out_dir / "checkpoint.stale.pt")
            (self.out_dir / STEP_LOG).unlink(missing_ok=True)
            self.state, self.start = None, 0
        self._desc, self._progress = desc, progress
        self._log: IO[str] | None = None
        self._bar: Any = None

    def __enter__(self) -> Run:
        from tqdm import tqdm

        self._log = open(self.out_dir / STEP_LOG, "a")  # noqa: SIM115 (closed in __exit__)
        disable = None if self._progress is None else not self._progress
        self._bar = tqdm(total=self.total, initial=self.start, disable=disable, desc=self._desc)
        return self

    def __exit__(self, *exc: object) -> None:
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

    def save(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` (``state`` plus the run's meta), the log flushed first so the log
        never runs behind the checkpoint."""
        if self._log is not None:
            self._log.flush()
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state | {"meta": self.meta}, tmp)


def check_finite(
    terms: dict[str, Any], values: Sequence[float], what: str, step: int, checkpoint: Path
) -> None:
    """Stop on a non-finite loss, naming the terms and the checkpoint that holds the last good state."""
    if not np.isfinite(values).all():
        bad = [k for k, v in zip(terms, values, strict=True) if not np.isfinite(v)]
        raise FloatingPointError(
            f"{what} diverged at step {step} (non-finite {', '.join(bad)}); "
            f"{checkpoint} holds the last good state"
        )

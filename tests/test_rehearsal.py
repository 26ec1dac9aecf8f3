"""Dress rehearsal of the paper preset: config/paper.yaml through the whole DAG at paper sizes.

A 3 s clip at 512 px goes from ingest to metrics.parquet, the ablation and the Snakemake report with
the paper's sizes (EG3D 512-128, 3 x 32 x 256^2 planes, the paper deltaplane net, wav2vec2-large),
paper backends and strict nets (``allow_missing_nets: false``); only the step counts are 1-2.
Every weights file is written here in its real format, with random weights, and pinned in a copy
of the manifest. Not part of ``make test`` (it takes most of an hour on 2 cores): ``make rehearsal``
runs it. It needs the paper extras (``make install-paper``: torchvision, lpips, facexlib).

Random networks cannot find a face, so the FAN file is a stand-in with 2DFAN4's TorchScript
interface (:func:`fan_stand_in`): it places a frontal 68-point face in the box it is given and opens
the lips and lids by amounts read from the pixels, so that every landmark metric has a face to
measure and a series that varies. The crop template (rule crop_template) is found the same way: the
random generator's average face has no face a detector sees, so FAN fits the box where the fixed
template expects one and the template comes out close to the fixed one. Every other file holds the
real architecture.

Set TALK3D_REHEARSAL_DIR to keep the run's folder (results, logs, benchmarks) for a look.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO_ROOT, write_snapshot

from talk3d_core.demo import make_demo_clip, make_demo_speech
from talk3d_core.face.landmark_backends.fan import (
    CENTER_SHIFT,
    CROP_SIDE_PER_SCALE,
    HEATMAP_SIZE,
    INPUT_SIZE,
    REFERENCE_SCALE,
)
from talk3d_core.face.template import MEAN_FACE_68
from talk3d_core.features import read_features_meta
from talk3d_core.util.media import probe

pytestmark = pytest.mark.rehearsal

SUBJECT = "clip"
# Seeds picked so the held-out frames (the last 1/11 of the clip) and the driving audio both hold
# speech and silence, which the speech/silence metrics need.
CLIP_SECONDS, CLIP_SEED = 3.0, 8
DRIVE_SECONDS, DRIVE_SEED = 1.0, 1
OVERRIDES = {
    "prior": {
        "pretrained": dict(n_pivots=2, pivot_steps=1, tune_steps=1, frame_first_steps=1, frame_steps=1)
    },
    # The lip-sync term from the first step (the paper's 21-epoch warm-up is longer than 2 steps).
    "train": {"steps": 2, "sr_steps": 1, "sample_every": 1, "checkpoint_every": 1, "sync_warmup_epochs": 0},
    "render": {"views": {"yaw": [30], "pitch": [0]}},
    "evaluate": {"fid_reference_frames": 8},
}


# ----------------------------------------------------------------------------- weights, real formats


class FanStandIn(torch.nn.Module):
    """2DFAN4's interface: (1, 3, 256, 256) crop in 0..1 -> (1, 68, 64, 64) heatmaps.

    The face is ``points`` (68, 2, heatmap px), the frontal mean face placed as FAN's crop places a
    face's landmark box. The inner and outer lower lip drop by 0..3 heatmap px and the upper lids by
    0..1.5 px, as functions of the mean brightness of the mouth and eye regions (a sine, so that even
    the near-uniform renders of a random generator give a series that varies).
    """

    def __init__(self, points: torch.Tensor, mouth_box: list[int], eye_box: list[int]) -> None:
        super().__init__()
        self.register_buffer("points", points.float())
        centres = torch.arange(HEATMAP_SIZE, dtype=torch.float32) + 0.5
        self.register_buffer("grid_y", centres[:, None].expand(HEATMAP_SIZE, HEATMAP_SIZE).clone())
        self.register_buffer("grid_x", centres[None, :].expand(HEATMAP_SIZE, HEATMAP_SIZE).clone())
        self.mouth_box = mouth_box  # x0, y0, x1, y1 in crop px
        self.eye_box = eye_box
        self.lower_lip = [55, 56, 57, 58, 59, 65, 66, 67]
        self.upper_lids = [37, 38, 43, 44]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mouth_box
        e = self.eye_box
        mouth = x[:, :, m[1] : m[3], m[0] : m[2]].mean()
        eyes = x[:, :, e[1] : e[3], e[0] : e[2]].mean()
        shift = torch.zeros_like(self.points)
        shift[self.lower_lip, 1] = 1.5 * (1.0 + torch.sin(60.0 * mouth))
        shift[self.upper_lids, 1] = 0.75 * (1.0 + torch.sin(60.0 * eyes))
        p = self.points + shift
        d2 = (self.grid_x[None] - p[:, 0, None, None]) ** 2 + (self.grid_y[None] - p[:, 1, None, None]) ** 2
        return torch.exp(-d2 / 2.0)[None]


def fan_stand_in(path: Path) -> None:
    """Write :class:`FanStandIn` as a TorchScript file (the format face-alignment releases 2DFAN4 in)."""
    face = MEAN_FACE_68[:, :2] * np.array([1.0, -1.0])  # head frame (y up) -> image (y down)
    lo, hi = face.min(axis=0), face.max(axis=0)
    # A landmark box of width w and height h fills w / side of FAN's crop, side = 200 (w + h) / 195.
    px_per_mm = INPUT_SIZE * REFERENCE_SCALE / CROP_SIDE_PER_SCALE / float((hi - lo).sum())
    height = (hi - lo)[1] * px_per_mm
    centre = np.array([(INPUT_SIZE - 1) / 2, (INPUT_SIZE - 1) / 2 + CENTER_SHIFT * height])
    crop_px = (face - (lo + hi) / 2) * px_per_mm + centre
    stride = INPUT_SIZE / HEATMAP_SIZE

    def box(index: range) -> list[int]:
        a, b = crop_px[list(index)].min(axis=0), crop_px[list(index)].max(axis=0)
        return [int(a[0]) - 4, int(a[1]) - 4, int(b[0]) + 5, int(b[1]) + 5]

    module = FanStandIn(torch.from_numpy((crop_px + 0.5) / stride), box(range(48, 68)), box(range(36, 48)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))


def write_weights(weights: Path, manifest_in: Path) -> None:
    """Every file config/paper.yaml needs, random weights in each real format, pinned in a manifest copy."""
    import lpips
    import torchvision
    from facexlib.recognition.arcface_arch import Backbone
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from talk3d_core.face.bisenet import WEIGHTS_DEST, BiSeNet
    from talk3d_core.metrics.sync import SyncNetV2
    from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator
    from talk3d_core.model.gfpgan import GFPGAN
    from talk3d_core.nets.lipsync_expert import SyncNetColor

    torch.manual_seed(0)
    # EG3D FFHQ 512-128 in NVlabs' pickle layout; w_avg is one mapped sample (a zero w_avg is no face).
    generator = TriPlaneGenerator(GeneratorConfig.paper(plane_axes="original")).eval()
    with torch.no_grad():
        w = generator.mapping(torch.randn(1, 512), torch.zeros(1, 25))
        generator.backbone.mapping.w_avg.copy_(w[0, 0])
    (weights / "eg3d").mkdir(parents=True)
    write_snapshot(weights / "eg3d/ffhqrebalanced512-128.pkl", generator)
    del generator

    # wav2vec2-large-xlsr-53 with the Esperanto CTC head (44 tokens), as save_pretrained writes it.
    folder = weights / "wav2vec2-large-xlsr-53-esperanto"
    config = Wav2Vec2Config(
        vocab_size=44, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        architectures=["Wav2Vec2ForCTC"],
    )  # fmt: skip
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    preprocessor = {
        "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 16000,
    }  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.json"):
        (folder / name).write_text("{}")

    # Wav2Lip's lip-sync expert (checkpoint dict) and SyncNet v2 (bare state dict).
    (weights / "syncnet").mkdir()
    torch.save({"state_dict": SyncNetColor().state_dict()}, weights / "syncnet/lipsync_expert.pth")
    torch.save(SyncNetV2().state_dict(), weights / "syncnet/syncnet_v2.model")
    # facexlib's ArcFace IR-SE50, torchvision's AlexNet (LPIPS trunk) and lpips' v0.1 linear heads.
    (weights / "arcface").mkdir()
    torch.save(
        Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").state_dict(),
        weights / "arcface/model_ir_se50.pth",
    )
    (weights / "lpips/v0.1").mkdir(parents=True)
    torch.save(
        torchvision.models.alexnet(weights=None).state_dict(), weights / "lpips/alexnet-owt-7be5be79.pth"
    )
    heads = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).state_dict()
    torch.save({k: v for k, v in heads.items() if k.startswith("lin")}, weights / "lpips/v0.1/alex.pth")
    fan_stand_in(weights / "face_alignment/2DFAN4-cd938726ad.zip")
    # BiSeNet face parsing (79999_iter.pth's flat state dict). A fresh one labels background, skin,
    # lips and eyes in every crop (at least 4% of the pixels each on german and demo frames), so the
    # masked terms have pixels.
    torch.manual_seed(0)
    (weights / WEIGHTS_DEST).parent.mkdir(parents=True)
    torch.save(BiSeNet().state_dict(), weights / WEIGHTS_DEST)

    # GFPGAN v1.3 (train.sr gfpgan) as TencentARC releases it: a dict whose params_ema is the network.
    (weights / "gfpgan").mkdir()
    torch.save({"params_ema": GFPGAN().state_dict()}, weights / "gfpgan/GFPGANv1.3.pth")

    manifest = yaml.safe_load(manifest_in.read_text())
    for entry in manifest["weights"]:
        path = weights / entry["dest"]
        if path.is_file():
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry.pop("size_bytes", None)
    (weights / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


# -------------------------------------------------------------------------------------------- the run


def _paper_extras_or_fail() -> None:
    try:
        import facexlib.recognition.arcface_arch  # noqa: F401
        import lpips  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as exc:
        pytest.fail(
            f"the rehearsal needs the paper extras ({type(exc).__name__}: {exc}); run make install-paper"
        )


def _unavailable(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["status"] != "ok") | table["value"].isna()]


def _nulls(tree: object, where: str = "") -> list[str]:
    """Paths of the None values in a JSON tree."""
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _nulls(v, f"{where}/{k}")]
    if isinstance(tree, list):
        return [p for i, v in enumerate(tree) for p in _nulls(v, f"{where}[{i}]")]
    return [where] if tree is None else []


def test_paper_preset_dress_rehearsal(tmp_path):
    _paper_extras_or_fail()
    root = Path(os.environ.get("TALK3D_REHEARSAL_DIR") or tmp_path / "rehearsal")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ("workflow", "talk3d_core", "config"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    started = time.monotonic()
    write_weights(root / "resources/weights", REPO_ROOT / "resources/weights/manifest.yaml")
    make_demo_clip(root / "clip.mp4", duration_s=CLIP_SECONDS, size=512, seed=CLIP_SEED)
    make_demo_speech(root / "speech.wav", duration_s=DRIVE_SECONDS, seed=DRIVE_SEED)
    (root / "config/subjects.tsv").write_text(
        f"name\tvideo\taudio\tdrive\tnotes\n{SUBJECT}\tclip.mp4\t\tspeech.wav\tdress rehearsal\n"
    )
    (root / "rehearsal.yaml").write_text(yaml.safe_dump(OVERRIDES))
    prepared = time.monotonic() - started

    # The copied talk3d_core is the one the jobs import; no checkpoint throttle (steps are few).
    env = os.environ | {"PYTHONPATH": str(root), "TALK3D_CHECKPOINT_INTERVAL_S": "0"}
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "2"]
    config = ["--configfile", "config/paper.yaml", "rehearsal.yaml"]
    run = subprocess.run([*snakemake, *config], cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, f"snakemake failed; log tail:\n{run.stderr[-6000:]}"
    report = subprocess.run(
        [*snakemake, *config, "--report", f"results/{SUBJECT}/report.html"],
        cwd=root, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    wall = time.monotonic() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB -> GB, largest job

    results = root / "results" / SUBJECT
    metrics = pd.read_parquet(results / "metrics.parquet")
    assert not metrics.empty
    missing = _unavailable(metrics)
    assert missing.empty, "metrics not computed:\n" + missing[["setting", "metric", "reason"]].to_string()
    log = [json.loads(line) for line in (results / "train/train_log.jsonl").read_text().splitlines()]
    main_terms = {"l1", "l1_raw", "lpips", "lpips_raw", "mouth", "identity", "sync", "total"}
    assert [set(r) - {"step", "stage", "lr", "seconds"} for r in log] == [main_terms] * 2 + [
        {"l1", "lpips", "total"}
    ], log  # the official recipe's terms in both stages
    ablation = json.loads((results / "train/ablation.json").read_text())
    assert not _nulls(ablation), f"ablation.json has values not computed: {_nulls(ablation)}"
    for video in ("video.mp4", "drive/speech.mp4", "views/30_0.mp4"):
        info = probe(results / video)
        assert info.video.display_size == (512, 512) and info.audio is not None, video  # paper size, sound
    assert probe(results / "depth.mp4").video is not None
    features = read_features_meta(results / "features.parquet")  # Talk3D's landmark and audio tokens
    assert features["landmark_token"] == "frame" and features["audio_normalise"] is False
    assert (results / "report.html").stat().st_size > 0

    # What the run cost, per stage (Snakemake's benchmark files), for the closing note.
    stages = {
        tsv.stem: float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])
        for tsv in sorted((results / "benchmarks").glob("*.tsv"))
    }
    print(f"\nrehearsal: {wall / 60:.1f} min wall ({prepared:.0f} s writing weights and clip), "
          f"largest job peak RSS {peak_gb:.1f} GB, {len(metrics)} metrics rows all computed")  # fmt: skip
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:28s} {seconds:8.1f} s")

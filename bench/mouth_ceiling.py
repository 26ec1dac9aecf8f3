"""Can this render show the mouth at all? One free deltaplane per frame (no network, no tokens) fitted
to the first N training frames of a prepared subject, with the train stage's losses, then the mouth of
each render scored against its crop.

    python bench/mouth_ceiling.py --subject german [--frames 45] [--steps 1500] [--lr 0.005]
        [--set train.KEY=VALUE ...]

Reads results/<subject>/{prior,crops,masks,features.parquet} and the train settings of
config/config.yaml (the subject's overrides, then ``--set``; bench/audio_ablation.py's reading). The
frozen generator renders P_ID + dP_n for frame n's tracked camera; only the N deltaplanes (each the
shape of P_ID) are optimised, Adam at ``--lr``, two frames a step, on the per-batch terms of the train
stage (its zoomed mouth term, which renders through the network's head, is left out). If these renders
reach an opening r near the footage's, the plane and render size can show the mouth, and a network that
misses it is limited by its mapping from tokens to planes, not by the representation
(docs/decisions.md#mouth-fit-representation-or-network; compare bench/audio_ablation.py --only N --fit
N, the network trained on the same frames alone). Prints LMD, opening r and MAE at step 0 (P_ID alone)
and three times during the fit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from audio_ablation import subject_prior_and_data, subject_settings

from talk3d_core.metrics.mouth import expected_face_box, landmarks_of_images, mouth_scores
from talk3d_core.train import configs_from_settings, deltaplane_losses, loss_nets
from talk3d_core.util.images import to_uint8, to_unit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subject", default="german")
    parser.add_argument("--frames", type=int, default=45, help="the first N training frames")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--backend", default="mediapipe", help="landmark backend of the scores")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE over config.yaml")
    args = parser.parse_args()

    torch.manual_seed(0)
    _, cfg = configs_from_settings(subject_settings(args.subject, args.set)["train"])
    prior, data = subject_prior_and_data(args.subject)  # no zoomed mouth term here
    frames = np.flatnonzero(data.train)[: args.frames]
    n = len(frames)
    generator = prior.generator.requires_grad_(False)
    identity = prior.identity_planes.detach()
    delta = torch.zeros((n, *identity.shape[1:]), requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=args.lr)
    nets = loss_nets(cfg, torch.device("cpu"))
    target = to_unit(data.crops[frames])
    face, mouth = data.face[frames], data.mouth[frames]
    cameras = torch.as_tensor(np.asarray(data.cameras)[frames]).float()
    truth = landmarks_of_images(to_uint8(target), backend=args.backend)
    box = expected_face_box(truth)

    def styles(count: int) -> torch.Tensor:
        return prior.w_id.detach().expand(count, -1, -1)

    def score(label: str) -> None:
        parts = []
        with torch.no_grad():
            for i in range(0, n, 8):
                b = slice(i, i + 8)
                out = generator.render(identity + delta[b], cameras[b], styles(len(cameras[b])), jitter=False)
                parts.append(out["image"])
        images = torch.cat(parts).clamp(-1, 1)
        marks = landmarks_of_images(to_uint8(images), backend=args.backend, expected_box=box)
        s = mouth_scores(marks, truth, images.shape[-1]).as_dict()
        shown = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items())
        print(label, shown, flush=True)

    score("step 0 (P_ID alone)")
    start = time.time()
    for step in range(1, args.steps + 1):
        pick = torch.randint(0, n, (2,))
        out = generator.render(identity + delta[pick], cameras[pick], styles(2), jitter=True)
        loss = deltaplane_losses(out, target[pick], face[pick], mouth[pick], cfg, nets)["total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % max(1, args.steps // 3) == 0:
            score(f"step {step} ({time.time() - start:.0f} s, loss {loss.item():.4f})")


if __name__ == "__main__":
    main()

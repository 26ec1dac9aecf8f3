"""Adapter: rule ablation -> talk3d_core.ablation (P_ID alone vs audio token zeroed vs full model)."""

from talk3d_core.ablation import audio_ablation
from talk3d_core.io import write_json
from talk3d_core.logs import log_to
from talk3d_core.train import load_talking_head, load_training_data

with log_to(snakemake.log[0]) as log:
    head = load_talking_head(snakemake.input.model)
    data, conditions = load_training_data(
        snakemake.input.crops, snakemake.input.masks, snakemake.input.prior_frames, snakemake.input.features,
        head.generator.config.image_resolution, background=snakemake.params.background,
    )  # fmt: skip
    results = audio_ablation(
        head, data, conditions, landmark_backend=snakemake.params.ablation["landmark_backend"],
        sheet_png=snakemake.output.sheet,
    )  # fmt: skip
    log.info("held-out frames: %d (landmarks found on %.0f%% of ground truth)",
             results["frames"], 100 * results["ground_truth"]["detected"])  # fmt: skip

    def shown(value, fmt):  # None: the metric could not be computed (e.g. a mouth that never moves)
        return "n/a" if value is None else format(value, fmt)

    for name, s in results["settings"].items():
        log.info(
            "%-9s face PSNR %.2f dB, SSIM %.3f, LMD %s px, mouth-opening r %s, landmarks on %.0f%%",
            name, s["face_psnr"], s["face_ssim"], shown(s["lmd"], ".2f"),
            shown(s["opening_correlation"], ".3f"), 100 * s["detected"],
        )  # fmt: skip

    def interval(ci, fmt):
        return "" if ci is None else f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"

    for pair, d in results["differences"].items():
        lmd, r = d["lmd"], d["opening_correlation"]
        log.info(
            "%s over %d frames: LMD %s px%s, mouth-opening r %s%s (95%% block-bootstrap intervals)",
            pair, d["frames"], shown(lmd["difference"], "+.2f"), interval(lmd["ci95"], "+.2f"),
            shown(r["difference"], "+.3f"), interval(r["ci95"], "+.3f"),
        )  # fmt: skip
    write_json(snakemake.output.metrics, results)

# Stage 8, train: the audio-guided deltaplane U-Net on top of the prior, then the super-resolution fine-tune.


rule train:
    """Train the deltaplane predictor F(P_ID, t_n) on the training frames; resumable."""
    input:
        generator="results/{subject}/prior/generator.pt",
        identity="results/{subject}/prior/P_id.pt",
        prior_frames="results/{subject}/prior/frames.parquet",
        features="results/{subject}/features.parquet",
        crops="results/{subject}/crops",
        masks="results/{subject}/masks",
        crop_table="results/{subject}/crop.parquet",
        audio="results/{subject}/audio.wav",
        nets=loss_net_files("train"),
        sr_weights=sr_weights,
    output:
        # train_log.jsonl, checkpoint.pt, samples/ and tensorboard/ sit beside it, undeclared: Snakemake
        # deletes declared outputs before a job runs, and a resumed run needs them.
        model="results/{subject}/train/deltaplane.pt",
        curves=report(
            "results/{subject}/train/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="Training",
            subcategory="{subject}",
        ),
    log:
        "results/{subject}/logs/train.log",
    benchmark:
        "results/{subject}/benchmarks/train.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=frames_mem_mb(4000),
        runtime=steps_runtime("train"),
        gpu=1,
    params:
        train=settings("train"),
        weights=config["weights"],
        fps=config["fps"],
        code=core_hash("talk3d_core.train"),
    script:
        "../scripts/train.py"


rule ablation:
    """Held-out frames rendered from P_ID alone, with the audio token zeroed, and in full; face PSNR and
    mouth metrics of each (does the audio drive the mouth?), and for a synthetic clip the scores against
    what it was drawn with."""
    input:
        unpack(clip_truth),
        model="results/{subject}/train/deltaplane.pt",
        prior_frames="results/{subject}/prior/frames.parquet",
        features="results/{subject}/features.parquet",
        crops="results/{subject}/crops",
        masks="results/{subject}/masks",
        crop_table="results/{subject}/crop.parquet",
        landmark_weights=backend_weights("ablation", "landmark_backend"),
    output:
        metrics="results/{subject}/train/ablation.json",
        sheet=report(
            "results/{subject}/train/ablation_sheet.png",
            caption="../report/ablation_sheet.rst",
            category="Training",
            subcategory="{subject}",
        ),
    log:
        "results/{subject}/logs/ablation.log",
    benchmark:
        "results/{subject}/benchmarks/ablation.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=frames_mem_mb(3000),
        runtime=30,
        gpu=1,
    params:
        ablation=settings("ablation"),
        fps=config["fps"],
        code=core_hash("talk3d_core.ablation"),
    script:
        "../scripts/ablation.py"

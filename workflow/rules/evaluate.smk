# Stage 10, evaluate: the paper's metrics (self-driven, cross-driven, novel views) and the report pages.


rule fid_reference:
    """FID's reference: Inception features of the training crops, once per subject (not per model)."""
    input:
        generator="results/{subject}/prior/generator.pt",  # the crops' size and background
        prior_frames="results/{subject}/prior/frames.parquet",
        features="results/{subject}/features.parquet",
        crops="results/{subject}/crops",
        masks="results/{subject}/masks",
    output:
        "results/{subject}/fid_reference.npz",
    log:
        "results/{subject}/logs/fid_reference.log",
    benchmark:
        "results/{subject}/benchmarks/fid_reference.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=frames_mem_mb(4000),
        runtime=60,
        gpu=1,
    params:
        frames=lambda wildcards: SUBJECT_CONFIG[wildcards.subject]["evaluate"]["fid_reference_frames"],
        batch_size=lambda wildcards: SUBJECT_CONFIG[wildcards.subject]["evaluate"]["batch_size"],
        code=core_hash("talk3d_core.fid_reference"),
    script:
        "../scripts/fid_reference.py"


rule evaluate:
    """Every metric of the paper, each with the backend that computed it or the reason it is unavailable."""
    input:
        unpack(clip_truth),
        model="results/{subject}/train/deltaplane.pt",
        prior_frames="results/{subject}/prior/frames.parquet",
        features="results/{subject}/features.parquet",
        crops="results/{subject}/crops",
        masks="results/{subject}/masks",
        crop_table="results/{subject}/crop.parquet",
        audio="results/{subject}/audio.wav",
        fid_reference="results/{subject}/fid_reference.npz",
        renders="results/{subject}/renders/video.mkv",
        drive_renders=lambda wc: [
            f"results/{wc.subject}/renders/drive/{a}.mkv" for a in SUBJECTS[wc.subject].drive
        ],
        view_renders=lambda wc: [
            f"results/{wc.subject}/renders/views/{v}.mkv" for v in view_names(wc.subject)
        ],
        drive_features=lambda wc: [
            f"results/{wc.subject}/drive/{a}/features.parquet" for a in SUBJECTS[wc.subject].drive
        ],
        drive_audio=lambda wc: [
            f"results/{wc.subject}/drive/{a}/audio.wav" for a in SUBJECTS[wc.subject].drive
        ],
        landmark_weights=backend_weights("evaluate", "landmark_backend"),
    output:
        metrics="results/{subject}/metrics.parquet",
        views=report(
            "results/{subject}/metrics_views.png",
            caption="../report/metrics_views.rst",
            category="Evaluation",
            subcategory="{subject}",
        ),
    log:
        "results/{subject}/logs/evaluate.log",
    benchmark:
        "results/{subject}/benchmarks/evaluate.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=frames_mem_mb(6000),
        runtime=120,
        gpu=1,
    params:
        evaluate=settings("evaluate"),
        weights=config["weights"],
        drives=lambda wildcards: list(SUBJECTS[wildcards.subject].drive),
        view_convention=lambda wildcards: SUBJECT_CONFIG[wildcards.subject]["render"]["view_convention"],
        views=lambda wildcards: view_names(wildcards.subject),
        fps=config["fps"],
        code=core_hash("talk3d_core.evaluate"),
    script:
        "../scripts/evaluate.py"


rule video_page:
    """One page with the subject's videos (embedded so they play in the report) and its metric table."""
    input:
        video="results/{subject}/video.mp4",
        depth="results/{subject}/depth.mp4",
        drive=lambda wc: [f"results/{wc.subject}/drive/{a}.mp4" for a in SUBJECTS[wc.subject].drive],
        views=lambda wc: [f"results/{wc.subject}/views/{v}.mp4" for v in view_names(wc.subject)],
        metrics="results/{subject}/metrics.parquet",
    output:
        report(
            "results/{subject}/videos.html",
            caption="../report/videos.rst",
            category="Videos",
            subcategory="{subject}",
        ),
    log:
        "results/{subject}/logs/video_page.log",
    conda:
        "../envs/core.yaml"
    params:
        code=core_hash("talk3d_core.report.video_page"),
    script:
        "../scripts/video_page.py"

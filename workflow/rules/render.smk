# Stage 9, render: videos of the trained model (self-driven, driven by other audio, novel views, depth),
# and each one's renders at the model's resolution, losslessly (renders/), which rule evaluate scores.


rule render_video:
    """The held-out part of the clip re-rendered from its tracked cameras and audio, and its depth."""
    input:
        model="results/{subject}/train/deltaplane.pt",
        prior_frames="results/{subject}/prior/frames.parquet",
        features="results/{subject}/features.parquet",
        audio="results/{subject}/audio.wav",
        frames="results/{subject}/frames",
        crop_table="results/{subject}/crop.parquet",
    output:
        video="results/{subject}/video.mp4",
        depth="results/{subject}/depth.mp4",
        renders="results/{subject}/renders/video.mkv",
    log:
        "results/{subject}/logs/render_video.log",
    benchmark:
        "results/{subject}/benchmarks/render_video.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    params:
        mode="video",
        view=None,
        render=settings("render"),
        fps=config["fps"],
        code=core_hash("talk3d_core.render"),
    script:
        "../scripts/render.py"


rule render_drive:
    """The subject driven by another audio file (tracked or frontal camera, see render.drive_camera)."""
    input:
        model="results/{subject}/train/deltaplane.pt",
        prior_frames="results/{subject}/prior/frames.parquet",
        features="results/{subject}/features.parquet",
        drive_features="results/{subject}/drive/{audio}/features.parquet",
        audio="results/{subject}/drive/{audio}/audio.wav",
        frames="results/{subject}/frames",
        crop_table="results/{subject}/crop.parquet",
    output:
        video="results/{subject}/drive/{audio}.mp4",
        renders="results/{subject}/renders/drive/{audio}.mkv",
    log:
        "results/{subject}/logs/render_drive_{audio}.log",
    benchmark:
        "results/{subject}/benchmarks/render_drive_{audio}.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    params:
        mode="drive",
        view=None,
        render=settings("render"),
        fps=config["fps"],
        code=core_hash("talk3d_core.render"),
    script:
        "../scripts/render.py"


rule render_view:
    """The held-out part of the clip seen from a novel view, yaw_pitch in degrees (e.g. views/-30_20.mp4)."""
    input:
        model="results/{subject}/train/deltaplane.pt",
        prior_frames="results/{subject}/prior/frames.parquet",
        features="results/{subject}/features.parquet",
        audio="results/{subject}/audio.wav",
    output:
        video="results/{subject}/views/{view}.mp4",
        renders="results/{subject}/renders/views/{view}.mkv",
    log:
        "results/{subject}/logs/render_view_{view}.log",
    benchmark:
        "results/{subject}/benchmarks/render_view_{view}.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    params:
        mode="view",
        view=lambda wildcards: wildcards.view,
        render=settings("render"),
        fps=config["fps"],
        code=core_hash("talk3d_core.render"),
    script:
        "../scripts/render.py"

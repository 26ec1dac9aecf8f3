# Stage 6, features: audio windows, blink value, head rotation and landmark token per frame.


rule features:
    """One table per subject joined on frame: audio window, eye (AU45 scale), rotation, landmarks, split."""
    input:
        audio="results/{subject}/audio.wav",
        landmarks="results/{subject}/landmarks.parquet",
        crops="results/{subject}/crops",
        crop_table="results/{subject}/crop.parquet",
        camera="results/{subject}/camera.parquet",
        model=audio_model_files,
    output:
        "results/{subject}/features.parquet",
    log:
        "results/{subject}/logs/features.log",
    benchmark:
        "results/{subject}/benchmarks/features.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        fps=config["fps"],
        features=config["features"],
        code=core_hash("talk3d_core.features"),
    script:
        "../scripts/features.py"


rule drive_features:
    """Audio features of a driving audio file, with the subject's backend and normalisation."""
    input:
        audio="results/{subject}/drive/{audio}/audio.wav",
        subject="results/{subject}/features.parquet",
        model=audio_model_files,
    output:
        "results/{subject}/drive/{audio}/features.parquet",
    log:
        "results/{subject}/logs/drive_features_{audio}.log",
    conda:
        "../envs/core.yaml"
    threads: 2
    params:
        code=core_hash("talk3d_core.features"),
    script:
        "../scripts/drive_features.py"

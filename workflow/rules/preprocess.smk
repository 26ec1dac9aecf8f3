# Stages 2-5, face preprocessing: landmarks -> aligned crops -> head pose and EG3D cameras -> region masks.


rule landmarks:
    """68-point landmarks (plus the backend's own points) on every full frame, short gaps filled."""
    input:
        frames="results/{subject}/frames",
        weights=backend_weights("landmarks"),
    output:
        "results/{subject}/landmarks.parquet",
    log:
        "results/{subject}/logs/landmarks.log",
    benchmark:
        "results/{subject}/benchmarks/landmarks.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        landmarks=config["landmarks"],
        fps=config["fps"],
        weights_dir=config["weights"]["dir"],
        manifest=config["weights"]["manifest"],
        code=core_hash("talk3d_core.landmarks"),
    script:
        "../scripts/landmarks.py"


rule crop_template:
    """The pretrained prior's crop template: its average face rendered at the reference camera, landmarks."""
    input:
        checkpoint=prior_checkpoint,
        weights=backend_weights("landmarks"),
    output:
        "results/{subject}/crop_template.json",
    log:
        log="results/{subject}/logs/crop_template.log",
        # The render with its landmarks, for a look; a log, so it stays when no face is found.
        render="results/{subject}/logs/crop_template.png",
    benchmark:
        "results/{subject}/benchmarks/crop_template.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
    params:
        prior=settings("prior"),
        camera=config["camera"],
        landmarks=config["landmarks"],
        weights=config["weights"],
        code=core_hash("talk3d_core.crop_template"),
    script:
        "../scripts/crop_template.py"


rule crop:
    """Temporally smoothed similarity alignment to the crop template: crops/ and crop.parquet."""
    input:
        frames="results/{subject}/frames",
        landmarks="results/{subject}/landmarks.parquet",
        template=crop_template_input,
    output:
        crops=directory("results/{subject}/crops"),
        table="results/{subject}/crop.parquet",
    log:
        "results/{subject}/logs/crop.log",
    benchmark:
        "results/{subject}/benchmarks/crop.tsv"
    conda:
        "../envs/core.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        crop=settings("crop"),
        code=core_hash("talk3d_core.crop"),
    script:
        "../scripts/crop.py"


rule camera:
    """Head rotation and translation per frame and the EG3D 25-number camera label."""
    input:
        "results/{subject}/crop.parquet",
    output:
        "results/{subject}/camera.parquet",
    log:
        "results/{subject}/logs/camera.log",
    conda:
        "../envs/core.yaml"
    params:
        camera=config["camera"],
        code=core_hash("talk3d_core.camera"),
    script:
        "../scripts/camera.py"


rule masks:
    """Per-crop region labels: background, skin, lips, mouth interior, eyes, hair, neck/torso."""
    input:
        crops="results/{subject}/crops",
        table="results/{subject}/crop.parquet",
        weights=backend_weights("masks"),
    output:
        directory("results/{subject}/masks"),
    log:
        "results/{subject}/logs/masks.log",
    benchmark:
        "results/{subject}/benchmarks/masks.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        masks=config["masks"],
        weights_dir=config["weights"]["dir"],
        manifest=config["weights"]["manifest"],
        code=core_hash("talk3d_core.masks"),
    script:
        "../scripts/masks.py"


rule preprocess_sheet:
    """Contact sheet: crops with landmarks, region masks and head axes drawn, for a look by eye."""
    input:
        crops="results/{subject}/crops",
        masks="results/{subject}/masks",
        crop_table="results/{subject}/crop.parquet",
        camera="results/{subject}/camera.parquet",
    output:
        report(
            "results/{subject}/preprocess_sheet.png",
            caption="../report/preprocess_sheet.rst",
            category="Preprocessing",
            subcategory="{subject}",
        ),
    log:
        "results/{subject}/logs/preprocess_sheet.log",
    conda:
        "../envs/core.yaml"
    params:
        preview=config["preview"],
        code=core_hash("talk3d_core.report.preprocess_sheet"),
    script:
        "../scripts/preprocess_sheet.py"

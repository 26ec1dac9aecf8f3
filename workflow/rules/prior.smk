# Stage 7, prior: the personalized tri-plane generator, identity latent and identity tri-plane P_ID.


rule prior:
    """Fit the tri-plane generator to the subject (scratch) or personalize an EG3D checkpoint (pretrained,
    VIVE3D); cache P_ID; resumable."""
    input:
        crops="results/{subject}/crops",
        masks="results/{subject}/masks",
        camera="results/{subject}/camera.parquet",
        crop="results/{subject}/crop.parquet",
        checkpoint=prior_checkpoint,
        features="results/{subject}/features.parquet",
        nets=loss_net_files("prior"),
    output:
        generator="results/{subject}/prior/generator.pt",
        identity="results/{subject}/prior/P_id.pt",
        frames="results/{subject}/prior/frames.parquet",
        metrics="results/{subject}/prior/metrics.json",
        sheet=report(
            "results/{subject}/prior/prior_sheet.png",
            caption="../report/prior_sheet.rst",
            category="Prior",
            subcategory="{subject}",
        ),
    log:
        "results/{subject}/logs/prior.log",
    benchmark:
        "results/{subject}/benchmarks/prior.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=frames_mem_mb(4000),
        runtime=steps_runtime("prior"),
        gpu=1,
    params:
        prior=settings("prior"),
        weights=config["weights"],
        # The scratch mode's hash leaves out the pretrained personalization: editing it does not
        # restart a scratch prior.
        code=lambda wildcards: (
            core_hash("talk3d_core.prior")
            if SUBJECT_CONFIG[wildcards.subject]["prior"]["mode"] == "pretrained"
            else core_hash("talk3d_core.prior", exclude=("talk3d_core.personalize",))
        ),
    script:
        "../scripts/prior.py"

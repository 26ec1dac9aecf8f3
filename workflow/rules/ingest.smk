# Stage 1, ingest: a subject's video -> frames at the pipeline fps, 16 kHz mono audio, metadata.


rule demo_clip:
    """Synthetic talking clip generated in code, so the demo needs no download."""
    output:
        video=DEMO_CLIP,
        truth=DEMO_TRUTH,
    log:
        "results/logs/demo_clip.log",
    conda:
        "../envs/core.yaml"
    params:
        demo=config["demo"],
        fps=config["fps"],
        code=core_hash("talk3d_core.demo"),
    script:
        "../scripts/demo_clip.py"


rule demo_speech:
    """Synthetic speech for re-driving the demo subject (another seed than the clip's own audio)."""
    output:
        DEMO_SPEECH,
    log:
        "results/logs/demo_speech.log",
    conda:
        "../envs/core.yaml"
    params:
        seed=config["demo"]["seed"] + 1,
        code=core_hash("talk3d_core.demo"),
    script:
        "../scripts/demo_speech.py"


rule ingest:
    """Decode the subject's clip: frames/ (0-based PNGs), audio.wav, meta.json."""
    input:
        unpack(ingest_inputs),
    output:
        frames=directory("results/{subject}/frames"),
        audio="results/{subject}/audio.wav",
        meta="results/{subject}/meta.json",
    log:
        "results/{subject}/logs/ingest.log",
    benchmark:
        "results/{subject}/benchmarks/ingest.tsv"
    conda:
        "../envs/core.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        fps=config["fps"],
        ingest=config["ingest"],
        code=core_hash("talk3d_core.ingest"),
    script:
        "../scripts/ingest.py"


rule ingest_drive_audio:
    """A driving audio file (wav, mp3, m4a, flac, or a video's audio) -> 16 kHz mono WAV."""
    input:
        drive_audio_source,
    output:
        "results/{subject}/drive/{audio}/audio.wav",
    log:
        "results/{subject}/logs/ingest_drive_audio_{audio}.log",
    conda:
        "../envs/core.yaml"
    params:
        audio_rate=config["ingest"]["audio_rate"],
        code=core_hash("talk3d_core.ingest"),
    script:
        "../scripts/ingest_drive_audio.py"


rule ingest_preview:
    """Contact sheet of the ingested clip: frames over the waveform, for the report."""
    input:
        frames="results/{subject}/frames",
        audio="results/{subject}/audio.wav",
    output:
        report(
            "results/{subject}/ingest_preview.png",
            caption="../report/ingest_preview.rst",
            category="Ingest",
            subcategory="{subject}",
        ),
    log:
        "results/{subject}/logs/ingest_preview.log",
    conda:
        "../envs/core.yaml"
    params:
        fps=config["fps"],
        preview=config["preview"],
        code=core_hash("talk3d_core.report.ingest_preview"),
    script:
        "../scripts/ingest_preview.py"

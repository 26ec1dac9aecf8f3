# Model weights: every file a backend needs, fetched from the manifest with checksum verification.
import re

from talk3d_core.util.weights import load_manifest

WEIGHTS_DIR = config["weights"]["dir"].rstrip("/")
WEIGHTS = {
    entry.dest: entry
    for entry in load_manifest(config["weights"]["manifest"], SCHEMAS / "weights_manifest.schema.yaml")
}


rule fetch_weight:
    """Download one manifest entry to resources/weights/<dest> (resumable, sha256-verified, atomic)."""
    output:
        f"{WEIGHTS_DIR}/{{dest}}",
    log:
        "results/logs/weights/{dest}.log",
    wildcard_constraints:
        dest="|".join(map(re.escape, WEIGHTS)) or "(?!)",
    retries: 2
    conda:
        "../envs/core.yaml"
    params:
        entry=lambda wc: WEIGHTS[wc.dest],
        weights_dir=lambda wc, output: output[0][: -len(wc.dest)],
    script:
        "../scripts/fetch_weight.py"


rule weights:
    """Fetch every file in the manifest (or name one: snakemake resources/weights/<dest>)."""
    input:
        [f"{WEIGHTS_DIR}/{dest}" for dest in WEIGHTS],

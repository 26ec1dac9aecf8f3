"""Adapter: rule demo_speech -> talk3d_core.demo.make_demo_speech."""

from talk3d_core.demo import make_demo_speech
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    voiced = make_demo_speech(snakemake.output[0], seed=snakemake.params.seed)
    log.info("wrote %s: %d voiced segments", snakemake.output[0], len(voiced))

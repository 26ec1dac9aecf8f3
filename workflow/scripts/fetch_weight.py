"""Adapter: rule fetch_weight -> talk3d_core.util.weights.fetch."""

from talk3d_core.util.logs import log_to
from talk3d_core.util.weights import fetch

with log_to(snakemake.log[0]) as log:
    path = fetch(snakemake.params.entry, snakemake.params.weights_dir)
    log.info("%s ready at %s", snakemake.params.entry.name, path)

"""Adapter: rule fetch_weight -> talk3d_core.weights.fetch."""

from talk3d_core.logs import log_to
from talk3d_core.weights import fetch

with log_to(snakemake.log[0]) as log:
    # The output is <weights dir>/<dest>; the weights dir is what remains without the dest.
    weights_dir = snakemake.output[0][: -len(snakemake.wildcards.dest)]
    path = fetch(snakemake.params.entry, weights_dir)
    log.info("%s ready at %s", snakemake.params.entry.name, path)

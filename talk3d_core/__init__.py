"""Talk3D core library: every workflow stage as plain, testable Python (no Snakemake inside)."""

__version__ = "0.1.0"

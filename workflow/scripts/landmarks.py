"""Adapter: rule landmarks -> talk3d_core.landmarks.detect_landmarks."""

from talk3d_core.landmarks import detect_landmarks, write_landmarks
from talk3d_core.util.io import list_frames
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.landmarks
    track = detect_landmarks(
        list_frames(snakemake.input.frames),
        backend=opts["backend"],
        weights_dir=snakemake.params.weights_dir,
        manifest=snakemake.params.manifest,
        fps=snakemake.params.fps,
        max_gap_frames=opts["max_gap_frames"],
        max_missing_fraction=opts["max_missing_fraction"],
        what=f"subject '{snakemake.wildcards.subject}' ({snakemake.input.frames})",
    )
    write_landmarks(track, snakemake.output[0])
    log.info(
        "%s: face detected in %d of %d frames, %d interpolated",
        opts["backend"],
        int(track.detected.sum()),
        len(track.frame),
        int(track.interpolated.sum()),
    )

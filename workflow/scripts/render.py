"""Adapter: rules render_video, render_drive, render_view -> talk3d_core.render.render_target."""

from talk3d_core.features import read_features
from talk3d_core.logs import log_to
from talk3d_core.render import PasteBack, SubjectClip, render_target
from talk3d_core.train import load_talking_head

with log_to(snakemake.log[0]) as log:
    opts, inp, out = snakemake.params.render, snakemake.input, snakemake.output
    head = load_talking_head(inp.model)
    clip = SubjectClip.from_files(inp.features, inp.prior_frames)
    paste = None
    if opts["paste_back"] and "frames" in inp.keys():
        paste = PasteBack.from_files(
            inp.frames, inp.crop_table, feather_px=opts["feather_px"],
            use_opacity=snakemake.params.background == "black",  # the model draws the person on black
        )  # fmt: skip
    drive = read_features(inp.drive_features, kind="drive").audio if "drive_features" in inp.keys() else None
    summary = render_target(
        head, clip, out.video, camera=snakemake.params.camera, view=snakemake.wildcards.get("view"),
        drive_audio_features=drive, audio=inp.audio, drive_camera=opts["drive_camera"], paste=paste,
        depth_mp4=out.get("depth"), fps=snakemake.params.fps, batch_size=opts["batch_size"],
        output_size=opts["output_size"], crf=opts["crf"], progress=False,
    )  # fmt: skip
    log.info(
        "%s: %d frames at %dx%d, the model renders %.1f frames/s (%.1f s in all)",
        summary["video"], summary["frames"], *summary["size"], summary["render_fps"], summary["seconds"],
    )  # fmt: skip

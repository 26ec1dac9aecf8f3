"""Adapter: rule preprocess_sheet -> talk3d_core.report.preprocess_sheet.preprocess_sheet."""

from talk3d_core.camera import read_camera_table, vector_column
from talk3d_core.crop import read_crop_table
from talk3d_core.report.preprocess_sheet import preprocess_sheet
from talk3d_core.util.io import list_frames
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.preview
    crops = read_crop_table(snakemake.input.crop_table)
    cameras = read_camera_table(snakemake.input.camera)
    shown = preprocess_sheet(
        list_frames(snakemake.input.crops),
        list_frames(snakemake.input.masks),
        crops.lm68,
        {
            **{a: cameras[a].to_numpy() for a in ("yaw", "pitch", "roll")},
            "translation": vector_column(cameras, "translation"),
        },
        snakemake.output[0],
        focal=cameras.attrs["camera"]["focal"],
        columns=opts["columns"],
        rows=opts["rows"],
        tile=opts["tile"],
    )
    log.info("contact sheet of frames %s", shown["frames"])

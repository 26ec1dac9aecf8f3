"""Adapter: rule camera -> talk3d_core.camera.camera_table."""

from talk3d_core.camera import camera_table, write_camera_table
from talk3d_core.crop import read_crop_table
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.camera
    crops = read_crop_table(snakemake.input[0])
    table = camera_table(
        crops.lm68,
        crops.size,
        focal=opts["focal"],
        radius=opts["radius"],
        pivot=opts["pivot"],
        sigma_frames=opts["sigma_frames"],
        cuts=crops.meta["cuts"],
        frame=crops.frame,
        what=snakemake.input[0],
    )
    write_camera_table(table, snakemake.output[0])
    for angle in ("yaw", "pitch", "roll"):
        log.info("%s: %.1f .. %.1f deg", angle, table[angle].min(), table[angle].max())
    log.info("reprojection RMS: median %.2f px", table["reproj_px"].median())

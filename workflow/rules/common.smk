# Shared setup: config validation, the subjects table, and helpers used by every stage.
import functools
import os
import sys
from pathlib import Path

REPO_ROOT = Path(workflow.basedir).parent
# talk3d_core lives at the repository root: this file imports it from there, and the scripts, which
# run in other processes (perhaps in a conda environment without the package), find it through
# PYTHONPATH, which they inherit. This checkout's code comes first, before an installed copy.
sys.path.insert(0, str(REPO_ROOT))
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))

from talk3d_core.util.config import (
    AUDIO_ID_PATTERN,
    check_overrides,
    load_schema,
    load_subjects,
    novel_view_names,
    subject_config,
    subject_outputs,
    validate_config,
)
from talk3d_core.nets.requirements import needed_nets, required_net_files
from talk3d_core.util.provenance import source_hash

SCHEMAS = Path(workflow.basedir) / "schemas"
CONFIG_SCHEMA = load_schema(SCHEMAS / "config.schema.yaml")
# Validate before anything is planned: unknown keys and wrong types stop the run here, naming the key.
config.update(validate_config(config, CONFIG_SCHEMA))

# The demo clip and its driving speech are produced by rules demo_clip and demo_speech, so they need
# not exist yet.
DEMO_CLIP = "resources/demo/astronaut.mp4"
DEMO_TRUTH = "resources/demo/astronaut.truth.json"
DEMO_SPEECH = "resources/demo/speech.wav"
SUBJECTS = load_subjects(
    config["subjects"], load_schema(SCHEMAS / "subjects.schema.yaml"), generated=[DEMO_CLIP, DEMO_SPEECH]
)
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".mp4")


# Each subject's settings: the config with its overrides.<name> merged in (validated here too).
# An override for a name that is not in the table is an error (a typo would run full budgets); the
# built-in demo subject's overrides in config.yaml stay allowed when a table leaves it out.
check_overrides(config, [*SUBJECTS, *([] if "demo" in SUBJECTS else ["demo"])])
SUBJECT_CONFIG = {name: subject_config(config, name, CONFIG_SCHEMA) for name in SUBJECTS}


def settings(section):
    """Input/params function: the subject's settings of one config section."""
    return lambda wildcards: SUBJECT_CONFIG[wildcards.subject][section]


wildcard_constraints:
    subject="|".join(SUBJECTS) or "(?!)",
    audio=AUDIO_ID_PATTERN,
    view=r"-?[0-9]+_-?[0-9]+",


def ingest_inputs(wildcards):
    """The subject's video, plus its separate audio track when the table gives one."""
    s = SUBJECTS[wildcards.subject]
    return {"video": s.video, **({"audio": s.audio} if s.audio else {})}


def clip_truth(wildcards):
    """Input function for unpack(): {"truth": the JSON of what a synthetic clip was drawn with} when the
    subject's video is the demo clip (rule demo_clip writes it) or has a <video>.truth.json beside it
    (talk3d_core.demo.make_demo_clip's); nothing for a recording, which has no truth to score against."""
    video = SUBJECTS[wildcards.subject].video
    if os.path.normpath(video) == os.path.normpath(DEMO_CLIP):
        return {"truth": DEMO_TRUTH}
    truth = Path(video).with_suffix(".truth.json")
    return {"truth": str(truth)} if truth.is_file() else {}


def drive_audio_source(wildcards):
    """A driving audio file: listed in the subject's drive column, else <drive_audio_dir>/<audio>.<ext>."""
    listed = SUBJECTS[wildcards.subject].drive
    if wildcards.audio in listed:
        return listed[wildcards.audio]
    folder = Path(config["drive_audio_dir"])
    for suffix in AUDIO_SUFFIXES:
        if (folder / f"{wildcards.audio}{suffix}").is_file():
            return str(folder / f"{wildcards.audio}{suffix}")
    raise ValueError(
        f"no driving audio '{wildcards.audio}' for subject '{wildcards.subject}': it is not in the drive "
        f"column of {config['subjects']} ({', '.join(listed) or 'none listed'}) and there is no "
        f"{folder}/{wildcards.audio}{{{','.join(AUDIO_SUFFIXES)}}}"
    )


def view_names(subject):
    """The subject's novel-view grid (render.views, its overrides applied) as view ids '<yaw>_<pitch>'
    (degrees), every yaw with every pitch."""
    return novel_view_names(SUBJECT_CONFIG[subject]["render"]["views"])


def subject_targets(name):
    """Everything the workflow produces for one subject."""
    return subject_outputs(name, SUBJECTS[name].drive, view_names(name))


@functools.cache  # several rules share modules; one parse reads each closure once
def core_hash(*modules, exclude=()):
    """Hash of the talk3d_core code a rule runs (this checkout's), for the rule's params. Modules in
    ``exclude`` (and what only they import) are left out."""
    return source_hash(*modules, package_dir=REPO_ROOT / "talk3d_core", exclude=exclude)


# Memory and time asked of the scheduler, from the clip: the GPU stages hold every frame's crop and
# masks (about 7 bytes per pixel at the model's size; past 2 GiB memory-mapped from $TMPDIR, see
# talk3d_core.model.subject.frame_arrays) and run a known number of steps. Seconds per
# step: measured on 2 CPU cores for the CPU preset, a generous guess for the paper preset on a GPU
# (long stages resume after a time-out). Rationale and figures: docs/decisions.md#resources.
SECONDS_PER_STEP = {"cpu": 0.4, "paper": 1.0}


def model_preset(subject):
    prior = SUBJECT_CONFIG[subject]["prior"]
    return "paper" if prior["mode"] == "pretrained" or prior["generator"] == "paper" else "cpu"


def frames_mem_mb(base_mb):
    """Resource function: ``base_mb`` plus the subject's frames held in RAM (at most 2 GiB), +25%."""

    def mem_mb(wildcards, input):
        side = 512 if model_preset(wildcards.subject) == "paper" else 64
        frames_mb = len(os.listdir(input.crops)) * 7 * side * side / 1e6
        return int(base_mb + 1.25 * min(frames_mb, 2**31 / 1e6))

    return mem_mb


def steps_runtime(section):
    """Resource function: minutes for the section's steps (prior: its stages; train: both), x1.5."""

    def runtime(wildcards, input):
        settings = SUBJECT_CONFIG[wildcards.subject][section]
        if section == "train":
            steps = settings["steps"] + settings["sr_steps"]
        elif settings["mode"] == "pretrained":
            p = settings["pretrained"]
            frames = p["frame_first_steps"] + p["frame_steps"] * (len(os.listdir(input.crops)) - 1)
            steps = p["pivot_steps"] + p["tune_steps"] + frames  # at most: frames may stop early
        else:
            steps = settings["steps"]
        return int(10 + 1.5 * steps * SECONDS_PER_STEP[model_preset(wildcards.subject)] / 60)

    return runtime


def loss_net_files(section):
    """Input function: with ``allow_missing_nets: false`` the weight files of the section's loss nets
    (Snakemake fetches them from the manifest first); a missing Python package stops the run here,
    before any job. ``section``: "train", or "prior" (its pretrained personalization)."""

    def files(wildcards):
        settings = SUBJECT_CONFIG[wildcards.subject][section]
        if section == "prior":
            if settings["mode"] != "pretrained":
                return []
            settings = settings["pretrained"]
        if settings["allow_missing_nets"]:
            return []
        return required_net_files(
            needed_nets(settings), WEIGHTS_DIR, list(WEIGHTS.values()),
            sync_weights=settings.get("sync_weights"), what=f"{section} of subject '{wildcards.subject}'",
        )  # fmt: skip

    return files


def backend_weights(section, key="backend"):
    """Input function: the manifest files that the section's backend uses (FAN for landmarks.backend
    or evaluate/ablation.landmark_backend face_alignment, BiSeNet for masks.backend bisenet; nothing
    for the offline ones), so Snakemake fetches them first."""
    backend = config[section][key]
    return [f"{WEIGHTS_DIR}/{dest}" for dest, entry in WEIGHTS.items() if backend in entry.used_by]


def sr_weights(wildcards):
    """Input function: the weights of the subject's train.sr network (GFPGAN v1.3 for gfpgan, manifest
    entries used_by it; none for eg3d, the prior's own), so Snakemake fetches them first."""
    sr = SUBJECT_CONFIG[wildcards.subject]["train"]["sr"]
    return [f"{WEIGHTS_DIR}/{dest}" for dest, entry in WEIGHTS.items() if sr in entry.used_by]


def audio_model_files(wildcards):
    """Input function: the files of features.audio_model when it is a folder of manifest entries (the
    paper's wav2vec2), so Snakemake fetches them before the features are computed."""
    model = config["features"]["audio_model"]
    if not model:
        return []
    return [f"{WEIGHTS_DIR}/{dest}" for dest in WEIGHTS if Path(WEIGHTS_DIR, dest).parent == Path(model)]


def crop_template_input(wildcards):
    """Input function: the subject's crop template when crop.template is 'generator' (none for fixed)."""
    subject = SUBJECT_CONFIG[wildcards.subject]
    if subject["crop"]["template"] != "generator":
        return []
    if subject["prior"]["mode"] != "pretrained":
        raise ValueError(
            f"config crop.template: 'generator' frames the crops like the pretrained prior's generator and "
            f"needs prior.mode: pretrained (subject '{wildcards.subject}' has prior.mode: "
            f"{subject['prior']['mode']}); use crop.template: fixed"
        )
    return f"results/{wildcards.subject}/crop_template.json"


def prior_checkpoint(wildcards):
    """The EG3D pickle of mode pretrained (none for scratch), checked before any job runs."""
    prior = SUBJECT_CONFIG[wildcards.subject]["prior"]
    if prior["mode"] != "pretrained":
        return []
    path = prior["checkpoint"]
    if not Path(path).is_file() and path.removeprefix(f"{WEIGHTS_DIR}/") not in WEIGHTS:
        raise ValueError(
            f"config prior.checkpoint: {path} does not exist. prior.mode 'pretrained' needs an NVlabs "
            "EG3D pickle there (ffhqrebalanced512-128.pkl from NVIDIA NGC, model nvidia/research/eg3d, "
            "with prior.plane_axes: original; or the fixed-triplane variant), or use prior.mode: scratch."
        )
    return path

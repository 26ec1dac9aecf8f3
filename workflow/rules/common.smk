# Shared setup: config validation, the subjects table, and helpers used by every stage.
import functools
import sys
from pathlib import Path

REPO_ROOT = Path(workflow.basedir).parent
# talk3d_core lives at the repository root. Scripts find it through the installed package or, in a
# bare conda environment, through the workflow/scripts/talk3d_core link (Snakemake puts the
# scripts folder on their path).
sys.path.insert(0, str(REPO_ROOT))

from talk3d_core.config import load_schema, load_subjects, subject_config, validate_config
from talk3d_core.provenance import source_hash

SCHEMAS = Path(workflow.basedir) / "schemas"
CONFIG_SCHEMA = load_schema(SCHEMAS / "config.schema.yaml")
# Validate before anything is planned: unknown keys and wrong types stop the run here, naming the key.
config.update(validate_config(config, CONFIG_SCHEMA))

# The demo clip is produced by the demo_clip rule, so it need not exist yet.
DEMO_CLIP = "resources/demo/astronaut.mp4"
SUBJECTS = load_subjects(
    config["subjects"], load_schema(SCHEMAS / "subjects.schema.yaml"), generated=[DEMO_CLIP]
)


# Each subject's settings: the config with its overrides.<name> merged in (validated here too).
SUBJECT_CONFIG = {name: subject_config(config, name, CONFIG_SCHEMA) for name in SUBJECTS}


def settings(section):
    """Input/params function: the subject's settings of one config section."""
    return lambda wildcards: SUBJECT_CONFIG[wildcards.subject][section]


wildcard_constraints:
    subject="|".join(SUBJECTS) or "(?!)",
    audio=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def ingest_inputs(wildcards):
    """The subject's video, plus its separate audio track when the table gives one."""
    s = SUBJECTS[wildcards.subject]
    return {"video": s.video, **({"audio": s.audio} if s.audio else {})}


def subject_targets(name):
    """Everything the implemented stages produce for one subject."""
    s = SUBJECTS[name]
    return [
        f"results/{name}/meta.json",
        f"results/{name}/ingest_preview.png",
        f"results/{name}/camera.parquet",
        f"results/{name}/masks",
        f"results/{name}/preprocess_sheet.png",
        f"results/{name}/features.parquet",
        f"results/{name}/prior/P_id.pt",
        f"results/{name}/train/deltaplane.pt",
        f"results/{name}/train/ablation.json",
    ] + [f"results/{name}/drive/{audio}/features.parquet" for audio in s.drive]


@functools.cache  # several rules share modules; one parse reads each closure once
def core_hash(*modules):
    """Hash of the talk3d_core code a rule runs (this checkout's), for the rule's params."""
    return source_hash(*modules, package_dir=REPO_ROOT / "talk3d_core")


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

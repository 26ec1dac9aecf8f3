"""Config and subjects-table validation: defaults, and errors that name the key or file."""

import pytest
import yaml
from conftest import REPO_ROOT
from PIL import Image

from talk3d_core.util.config import (
    ConfigError,
    check_overrides,
    load_schema,
    load_subjects,
    novel_view_names,
    subject_config,
    validate_config,
)

CONFIG_SCHEMA = load_schema(REPO_ROOT / "workflow/schemas/config.schema.yaml")
SUBJECTS_SCHEMA = load_schema(REPO_ROOT / "workflow/schemas/subjects.schema.yaml")


def test_shipped_config_is_valid_and_complete():
    shipped = yaml.safe_load((REPO_ROOT / "config/config.yaml").read_text())
    filled = validate_config(shipped, CONFIG_SCHEMA)
    # config.yaml spells out every key, so users see every knob; the schema adds nothing.
    assert filled == shipped


def test_paper_overlay_is_valid():
    overlay = yaml.safe_load((REPO_ROOT / "config/paper.yaml").read_text())
    filled = validate_config(overlay, CONFIG_SCHEMA)
    assert filled["ingest"]["max_side"] == 2048 and filled["crop"]["size"] == 512
    assert filled["render"]["output_size"] is None  # paper videos at the model's own 512 px


def test_every_schema_key_has_default_and_description():
    def walk(schema, path):
        for key, sub in schema.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            assert "default" in sub, f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")

    walk(CONFIG_SCHEMA, "")


def test_defaults_fill_missing_sections():
    filled = validate_config({}, CONFIG_SCHEMA)
    assert filled["fps"] == 25
    assert filled["ingest"]["audio_rate"] == 16000
    assert filled["preview"]["columns"] == 4


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"key 'ingest\.max_sid'.*unknown key"):
        validate_config({"ingest": {"max_sid": 3}}, CONFIG_SCHEMA)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"key 'fps': 'fast' is not of type 'integer'"):
        validate_config({"fps": "fast"}, CONFIG_SCHEMA)


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate_config({"fps": 0, "preview": {"rows": "two"}}, CONFIG_SCHEMA)
    assert "key 'fps'" in str(info.value) and "key 'preview.rows'" in str(info.value)


def write_table(tmp_path, text):
    table = tmp_path / "subjects.tsv"
    table.write_text(text)
    return table


def test_subjects_table(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    drive = tmp_path / "speech.mp3"
    drive.write_bytes(b"x")
    table = write_table(
        tmp_path,
        "# comment lines are skipped\nname\tvideo\taudio\tdrive\tnotes\n"
        f"alice\t{video}\t\t{drive}\tok\n"
        "demo\tresources/demo/astronaut.mp4\t\t\t\n",
    )
    subjects = load_subjects(table, SUBJECTS_SCHEMA, generated=["resources/demo/astronaut.mp4"])
    assert list(subjects) == ["alice", "demo"]
    assert subjects["alice"].drive == {"speech": str(drive)}
    assert subjects["alice"].audio is None and subjects["demo"].notes is None


def test_missing_video_is_named(tmp_path):
    table = write_table(tmp_path, "name\tvideo\nbob\t/nowhere/bob.mp4\n")
    with pytest.raises(ConfigError, match=r"subject 'bob'.*video file /nowhere/bob.mp4 does not exist"):
        load_subjects(table, SUBJECTS_SCHEMA)


def test_bad_subject_rows_are_named(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    table = write_table(
        tmp_path,
        f"name\tvideo\nbad name\t{video}\nok\t\nok2\t{video}\nok2\t{video}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_subjects(table, SUBJECTS_SCHEMA)
    msg = str(info.value)
    assert "row 2: column 'name'" in msg  # space in a name
    assert "row 3: column 'video': required but missing" in msg
    assert "row 5: duplicate subject name 'ok2'" in msg


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("{dir}", r"video file .*clips is a directory, not a file"),
        ("/dev/null", r"video file /dev/null is a character device, not a regular file"),
        ("{empty}", r"video file .*empty\.mp4 is empty \(0 bytes\)"),
        ("{png}", r"video file .*still\.mp4 is a still image \(PNG\), not a video"),
    ],
)
def test_a_video_that_is_no_file_or_a_still_image_is_named_for_what_it_is(tmp_path, cell, problem):
    (tmp_path / "clips").mkdir()
    (tmp_path / "empty.mp4").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "still.mp4", format="PNG")
    paths = {"dir": tmp_path / "clips", "empty": tmp_path / "empty.mp4", "png": tmp_path / "still.mp4"}
    table = write_table(tmp_path, f"name\tvideo\nbob\t{cell.format(**paths)}\n")
    with pytest.raises(ConfigError, match=r"row 2 \(subject 'bob'\): " + problem):
        load_subjects(table, SUBJECTS_SCHEMA)


@pytest.mark.parametrize("audio", ["my speech.wav", ".hidden.wav", "-take.wav", "x" * 65 + ".wav"])
def test_a_driving_audio_name_that_cannot_name_an_output_is_an_error(tmp_path, audio):
    """Such a name passed the table and then broke the DAG for every subject (MissingInputException)."""
    video, drive = tmp_path / "a.mp4", tmp_path / audio
    video.write_bytes(b"x")
    drive.write_bytes(b"x")
    table = write_table(tmp_path, f"name\tvideo\tdrive\nbob\t{video}\t{drive}\n")
    with pytest.raises(ConfigError, match=r"subject 'bob'\): driving audio .*: its name .* rename the file"):
        load_subjects(table, SUBJECTS_SCHEMA)


def test_a_subject_name_too_long_for_a_file_name_is_an_error(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    table = write_table(tmp_path, f"name\tvideo\n{'a' * 300}\t{video}\n")
    with pytest.raises(ConfigError, match=r"row 2: column 'name': 'a+' is too long"):
        load_subjects(table, SUBJECTS_SCHEMA)
    load_subjects(write_table(tmp_path, f"name\tvideo\n{'a' * 64}\t{video}\n"), SUBJECTS_SCHEMA)


def test_unknown_column_is_named(tmp_path):
    table = write_table(tmp_path, "name\tvideo\tcolour\nok\tx.mp4\tred\n")
    with pytest.raises(ConfigError, match="unknown column\\(s\\) 'colour'"):
        load_subjects(table, SUBJECTS_SCHEMA)


def test_missing_table_is_named(tmp_path):
    with pytest.raises(ConfigError, match="subjects table .*nope.tsv does not exist"):
        load_subjects(tmp_path / "nope.tsv", SUBJECTS_SCHEMA)


# ------------------------------------------------------------------------------ per-subject overrides


def overridden(overrides: dict) -> dict:
    return validate_config({"overrides": overrides}, CONFIG_SCHEMA)


def test_an_override_changes_only_its_subject():
    config = overridden({"german": {"train": {"steps": 123}}})
    german, cnn = (
        subject_config(config, "german", CONFIG_SCHEMA),
        subject_config(config, "cnn", CONFIG_SCHEMA),
    )
    assert german["train"]["steps"] == 123
    assert cnn["train"]["steps"] == config["train"]["steps"] != 123
    assert config["train"]["steps"] != 123  # the shared config itself is untouched


def test_an_override_merges_nested_sections_key_by_key():
    config = overridden({"demo": {"prior": {"pretrained": {"pivot_steps": 7}, "steps": 9}}})
    demo = subject_config(config, "demo", CONFIG_SCHEMA)
    assert demo["prior"]["steps"] == 9 and demo["prior"]["pretrained"]["pivot_steps"] == 7
    # Keys beside the overridden ones keep their values, at both levels.
    assert demo["prior"]["batch_size"] == config["prior"]["batch_size"]
    assert demo["prior"]["pretrained"]["tune_steps"] == config["prior"]["pretrained"]["tune_steps"]


def test_the_demo_renders_and_scores_its_own_smaller_view_grid():
    shipped = validate_config(yaml.safe_load((REPO_ROOT / "config/config.yaml").read_text()), CONFIG_SCHEMA)
    demo = subject_config(shipped, "demo", CONFIG_SCHEMA)
    other = subject_config(shipped, "german", CONFIG_SCHEMA)
    assert sorted(novel_view_names(demo["render"]["views"])) == ["-30_0", "30_0"]
    assert len(novel_view_names(other["render"]["views"])) == 16
    assert demo["evaluate"]["fid_reference_frames"] < other["evaluate"]["fid_reference_frames"]
    # Sections that shape the shared preprocessing are not per subject.
    with pytest.raises(ConfigError, match=r"overrides\.demo"):
        validate_config({"overrides": {"demo": {"features": {"audio_window": 8}}}}, CONFIG_SCHEMA)


def test_a_bad_override_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        subject_config(overridden({"demo": {"train": {"steps": -1}}}), "demo", CONFIG_SCHEMA)
    with pytest.raises(ConfigError, match=r"train\.stpes"):
        subject_config(overridden({"demo": {"train": {"stpes": 10}}}), "demo", CONFIG_SCHEMA)


def test_overrides_for_an_unknown_subject_are_an_error_naming_both():
    config = overridden({"germna": {"train": {"steps": 5}}})
    with pytest.raises(ConfigError, match=r"'germna' is not a subject.*known: german, cnn"):
        check_overrides(config, ["german", "cnn"])
    check_overrides(overridden({"german": {"train": {"steps": 5}}}), ["german", "cnn"])  # a known name


def test_nan_and_infinity_are_not_settings():
    with pytest.raises(ConfigError, match=r"key 'train\.lr': nan is not a finite number"):
        validate_config({"train": {"lr": float("nan")}}, CONFIG_SCHEMA)
    with pytest.raises(ConfigError, match=r"key 'prior\.weight_l1': inf is not a finite number"):
        validate_config({"prior": {"weight_l1": float("inf")}}, CONFIG_SCHEMA)


def test_no_novel_views_must_be_said_on_purpose():
    for empty in ({"yaw": []}, {"pitch": []}):
        with pytest.raises(ConfigError, match=r"render\.views\.(yaw|pitch)': \[\] should be non-empty"):
            validate_config({"render": {"views": empty}}, CONFIG_SCHEMA)
    assert validate_config({"render": {"views": "none"}}, CONFIG_SCHEMA)["render"]["views"] == "none"
    with pytest.raises(ConfigError, match=r"render\.views"):
        validate_config({"render": {"views": "nothing"}}, CONFIG_SCHEMA)

"""The library API, used the way a data scientist would: only names imported from `deid_core`.

Checks that the documented names are exactly `deid_core.__all__`, that the README's examples run,
and the promises the functions make: nothing planted survives, results are deterministic under a
key and match the engine the gateway runs, files are written atomically and never overwritten by
surprise, bad input is a clear error, FlowEdit keeps the shape, the gate tells a kept lesion from a
vanished one.
"""

from __future__ import annotations

import copy
import re
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import deid_core
from deid_core import (
    ConfidentialityProfile,
    ConfigError,
    Deidentifier,
    FlowEditParams,
    GateOutcome,
    InvalidInputError,
    ProfileOption,
    ProjectKey,
    build_tiny_model,
    check_lesion,
    deidentify_dataset,
    deidentify_file,
    flowedit_images,
    load_model,
)
from tests.conftest import REPO
from tests.support.phi import write_planted_study
from tests.support.skin import disc, skin_photo

KEY = "k" * 16 + "0123456789abcdef0123456789abcdef"
OTHER_KEY = "z" * 16 + "0123456789abcdef0123456789abcdef"


def _library_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Library API\n")
    end = text.index("\n## ", start + 5)
    return text[start:end]


def test_all_lists_exactly_the_documented_names() -> None:
    section = _library_section()
    documented: set[str] = set()
    for row in re.findall(r"^\| (.+?) \| .+ \|$", section, flags=re.MULTILINE):
        documented.update(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", row))
    documented.discard("name")
    assert documented == set(deid_core.__all__)
    for name in deid_core.__all__:
        assert getattr(deid_core, name) is not None


@pytest.mark.slow
def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = write_planted_study(tmp_path / "src", "README", 1)
    (tmp_path / "in.dcm").write_bytes(study.files[0].read_bytes())
    truth = disc((64, 64), 32, 32, 12)
    Image.fromarray(skin_photo(truth)).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEID_PROJECT_KEY", KEY)
    blocks = re.findall(r"```python\n(.*?)```", _library_section(), flags=re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(textwrap.dedent(block), "README.md", "exec"), {})
    written = list((tmp_path / "out").glob("*.dcm"))
    assert len(written) == 1
    assert [n for n in study.needles if n.encode() in written[0].read_bytes()] == []


def test_deidentify_dataset_leaves_no_planted_value_and_is_deterministic(tmp_path: Path) -> None:
    study = write_planted_study(tmp_path, "API", 1)
    original = pydicom.dcmread(study.files[0])
    before = copy.deepcopy(original)
    out = deidentify_dataset(original, key=KEY, profile=["clean_descriptors"])
    text = str(out) + str(out.file_meta)
    assert [n for n in study.needles if n in text] == []
    assert out.PatientIdentityRemoved == "YES"
    assert original == before  # the input is not changed
    again = deidentify_dataset(
        original, key=ProjectKey(KEY.encode()), profile=["clean_descriptors"]
    )
    assert again.SOPInstanceUID == out.SOPInstanceUID and again.PatientID == out.PatientID
    other = deidentify_dataset(original, key=OTHER_KEY, profile=["clean_descriptors"])
    assert other.SOPInstanceUID != out.SOPInstanceUID and other.PatientID != out.PatientID
    # the engine the gateway runs gives the very same result
    profile = ConfidentialityProfile(options=frozenset({ProfileOption.CLEAN_DESCRIPTORS}))
    engine = Deidentifier(profile, ProjectKey(KEY.encode())).deidentify(original)
    assert engine == out


def test_profile_option_names_are_checked(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_planted_study(tmp_path, "OPT", 1).files[0])
    with pytest.raises(ConfigError, match="unknown option 'keep_everything'"):
        deidentify_dataset(ds, key=KEY, profile=["keep_everything"])
    with pytest.raises(ConfigError, match="cannot be used together"):
        deidentify_dataset(
            ds,
            key=KEY,
            profile=["retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"],
        )
    with pytest.raises(ConfigError, match="too short"):
        deidentify_dataset(ds, key="short", profile=None)


def test_deidentify_file_is_atomic_named_by_new_uid_and_never_overwrites(tmp_path: Path) -> None:
    source = write_planted_study(tmp_path / "src", "FILE", 1).files[0]
    folder = tmp_path / "out"
    folder.mkdir()
    written = deidentify_file(source, folder, key=KEY)
    ds = pydicom.dcmread(written)
    assert written.name == f"{ds.SOPInstanceUID}.dcm"
    assert [p.name for p in folder.iterdir()] == [written.name]  # no temporary left behind
    with pytest.raises(InvalidInputError, match="exists"):
        deidentify_file(source, written, key=KEY)
    assert deidentify_file(source, written, key=KEY, overwrite=True) == written
    named = deidentify_file(source, tmp_path / "named.dcm", key=KEY)
    assert pydicom.dcmread(named).SOPInstanceUID == ds.SOPInstanceUID


def test_deidentify_file_refuses_what_is_not_dicom(tmp_path: Path) -> None:
    bad = tmp_path / "CNRY-name-of-patient.txt"
    bad.write_text("not a DICOM file")
    with pytest.raises(InvalidInputError, match="not a readable DICOM file") as err:
        deidentify_file(bad, tmp_path / "out.dcm", key=KEY)
    assert "not a DICOM file" not in str(err.value)  # the content is never quoted
    assert not (tmp_path / "out.dcm").exists()
    with pytest.raises(InvalidInputError, match="no such file"):
        deidentify_file(tmp_path / "missing.dcm", tmp_path / "out.dcm", key=KEY)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_model(build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "sd3"))


@pytest.mark.slow
def test_flowedit_images_keeps_shape_and_is_deterministic(tiny_model) -> None:  # type: ignore[no-untyped-def]
    photos = np.stack([skin_photo(disc((48, 40), 24, 20, 8), seed=i, noise=2) for i in range(2)])
    params = FlowEditParams.defaults_for("sd3", num_steps=8, n_max=6)
    kwargs = dict(model=tiny_model, source_prompt="arm", target_prompt="other arm", params=params)
    edited = flowedit_images(photos, seeds=[3, 4], **kwargs)
    assert edited.shape == photos.shape and edited.dtype == np.uint8
    assert not np.array_equal(edited, photos)
    again = flowedit_images(photos, seeds=3, **kwargs)  # an int: image i gets 3 + i
    assert np.array_equal(edited, again)
    single = flowedit_images(photos[0], seeds=3, **kwargs)
    assert single.shape == photos[0].shape
    # Alone instead of in a batch of two: the same noise, but torch may sum in another order
    # (other kernel blocking for another batch size, with several threads), so a pixel can land
    # one level away after rounding to uint8; never more.
    assert np.abs(single.astype(int) - edited[0].astype(int)).max() <= 1
    untouched = flowedit_images(photos, seeds=3, **{**kwargs, "params": FlowEditParams(n_max=0)})
    assert np.array_equal(untouched, photos)
    with pytest.raises(InvalidInputError, match="uint8"):
        flowedit_images(photos.astype(np.float32), seeds=0, **kwargs)


def test_check_lesion_tells_a_kept_lesion_from_a_vanished_one() -> None:
    truth = disc((96, 96), 48, 48, 18)
    photo = skin_photo(truth, seed=1)
    kept = check_lesion(photo, photo.copy())
    assert kept.outcome is GateOutcome.ACCEPTED and kept.iou == pytest.approx(1.0)
    healed = skin_photo(np.zeros_like(truth), seed=1)
    gone = check_lesion(photo, healed)
    assert gone.outcome is GateOutcome.LESION_VANISHED and not gone.accepted
    with pytest.raises(ConfigError, match="needs a model"):
        check_lesion(photo, photo, method="twin")


@pytest.mark.slow
def test_twin_method_runs_on_a_model(tiny_model) -> None:  # type: ignore[no-untyped-def]
    photo = skin_photo(disc((64, 64), 32, 32, 12))
    result = check_lesion(photo, photo.copy(), method="twin", model=tiny_model)
    # a random tiny model's twin is noise: only the plumbing is checked here
    assert result.method.value == "twin"
    assert result.original_mask.shape == photo.shape[:2]


def test_public_functions_are_typed() -> None:
    import inspect

    for name in ("deidentify_dataset", "deidentify_file", "flowedit_images", "check_lesion"):
        signature = inspect.signature(getattr(deid_core, name))
        assert signature.return_annotation is not inspect.Signature.empty, name
        for parameter in signature.parameters.values():
            assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)

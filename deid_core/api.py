"""The library API: the gateway's de-identification as plain function calls, for data scientists
and pipelines that do not run a gateway.

Four functions, each a thin, typed front to the same engine the gateway runs, so a study
de-identified here and one that went through a gateway under the same key and profile are
identical (same pseudonymous UIDs, IDs and date shifts):

- `deidentify_dataset`: one pydicom Dataset in, a new de-identified Dataset out;
- `deidentify_file`: one DICOM file to another (or into a folder, named by its new UID), written
  atomically;
- `flowedit_images`: FlowEdit of RGB photographs (numpy arrays) on a local model;
- `check_lesion`: the lesion gate on an original and its edited photograph.

Keys may be given as a `ProjectKey` or as the key text (at least 32 characters); profiles as a
`ConfidentialityProfile` or as a list of option names. Errors are the project's own
(`InvalidInputError` for a bad file or image, `ConfigError` for a bad key, option or model), and
their messages never quote a value read from a dataset.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.keys import ProjectKey
from deid_core.options import ProfileOption

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

    from deid_core.deidentify import ClinicalTrialSubject
    from deid_core.flowedit import FlowEditParams
    from deid_core.lesion.gate import GateResult, LesionGateParams
    from deid_core.models import RectifiedFlowModel
    from deid_core.profile import ConfidentialityProfile

__all__ = ["check_lesion", "deidentify_dataset", "deidentify_file", "flowedit_images"]


def _key(key: ProjectKey | str | bytes) -> ProjectKey:
    if isinstance(key, ProjectKey):
        return key
    if isinstance(key, str):
        return ProjectKey(key.encode("utf-8"))
    if isinstance(key, bytes):
        return ProjectKey(key)
    raise ConfigError("key: give a ProjectKey or the key text")


def _profile(
    profile: ConfidentialityProfile | Iterable[ProfileOption | str] | None,
) -> ConfidentialityProfile:
    from deid_core.profile import ConfidentialityProfile

    if profile is None:
        return ConfidentialityProfile()
    if isinstance(profile, ConfidentialityProfile):
        return profile
    if isinstance(profile, str):
        raise ConfigError("profile: give a list of option names, not a single string")
    options = []
    for option in profile:
        try:
            options.append(ProfileOption(option))
        except ValueError:
            known = ", ".join(o.value for o in ProfileOption)
            raise ConfigError(f"profile: unknown option {option!r} (known: {known})") from None
    try:
        return ConfidentialityProfile(options=frozenset(options))
    except ValueError as exc:
        raise ConfigError(f"profile: {exc}") from None


def deidentify_dataset(
    ds: Dataset,
    *,
    key: ProjectKey | str | bytes,
    profile: ConfidentialityProfile | Iterable[ProfileOption | str] | None = None,
    trial: ClinicalTrialSubject | None = None,
    patient_id_issuer: str = "",
) -> Dataset:
    """De-identify one data set by the PS3.15 confidentiality profile (basic profile plus the
    given options) under the project key. Returns a new data set (with File Meta Information for
    the new instance); `ds` is not changed. The same key and profile give the same pseudonyms as
    a gateway configured with them. `trial` writes the Clinical Trial Subject module.
    `patient_id_issuer` is the issuer assumed where the data set names no Issuer of Patient ID
    (a gateway's `project.patient_id_issuer`)."""
    from deid_core.deidentify import Deidentifier

    deid = Deidentifier(_profile(profile), _key(key), trial, default_issuer=patient_id_issuer)
    return deid.deidentify(ds)


def deidentify_file(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key: ProjectKey | str | bytes,
    profile: ConfidentialityProfile | Iterable[ProfileOption | str] | None = None,
    trial: ClinicalTrialSubject | None = None,
    overwrite: bool = False,
    patient_id_issuer: str = "",
) -> Path:
    """De-identify the DICOM file `path` into `out` and return the path written.

    When `out` is an existing folder, the file is named after its new (pseudonymous) SOP Instance
    UID, never after anything identifying. The file appears complete or not at all (written to a
    temporary name, flushed to disk, renamed). An existing file is replaced only with
    `overwrite=True`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = Path(path)
    try:
        ds = pydicom.dcmread(source)
    except FileNotFoundError:
        raise InvalidInputError(f"{source.name}: no such file") from None
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise InvalidInputError(
            f"{source.name}: not a readable DICOM file ({type(exc).__name__})"
        ) from None
    result = deidentify_dataset(
        ds, key=key, profile=profile, trial=trial, patient_id_issuer=patient_id_issuer
    )
    target = Path(out)
    if target.is_dir():
        target = target / f"{result.SOPInstanceUID}.dcm"
    if target.exists() and not overwrite:
        raise InvalidInputError(f"{target}: exists (pass overwrite=True to replace it)")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        with tmp.open("wb") as fh:
            result.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _model(model: RectifiedFlowModel | str | os.PathLike[str], device: str) -> RectifiedFlowModel:
    from deid_core.models import RectifiedFlowModel, load_model

    if isinstance(model, RectifiedFlowModel):
        return model
    return load_model(Path(model), device=device)


def flowedit_images(
    images: np.ndarray,
    *,
    model: RectifiedFlowModel | str | os.PathLike[str],
    source_prompt: str,
    target_prompt: str,
    seeds: int | Sequence[int] = 0,
    params: FlowEditParams | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """FlowEdit (no inversion) of RGB photographs: `images` is uint8 of shape (H, W, 3) or
    (N, H, W, 3); the result has the same shape and size.

    `model` is a loaded model or a local model directory (diffusers layout, never downloaded).
    `params` defaults to the family's published settings. `seeds`: one per image, or one int from
    which image i gets seed + i; the same seeds give the same pixels for the same batch (an image
    edited alone rather than in a batch may differ by one level where torch sums in another
    order)."""
    import numpy as np

    from deid_core.flowedit import FlowEditor, FlowEditParams

    if not isinstance(images, np.ndarray):
        raise InvalidInputError("images: a numpy array of uint8, (H, W, 3) or (N, H, W, 3)")
    single = images.ndim == 3
    batch = images[np.newaxis] if single else images
    loaded = _model(model, device)
    editor = FlowEditor(
        loaded, params or FlowEditParams.defaults_for(loaded.family), source_prompt, target_prompt
    )
    count = batch.shape[0] if batch.ndim == 4 else 0
    seed_list = [seeds + i for i in range(count)] if isinstance(seeds, int) else list(seeds)
    edited = editor.edit(batch, seed_list)
    return edited[0] if single else edited


def check_lesion(
    original: np.ndarray,
    deidentified: np.ndarray,
    *,
    method: Literal["synthesis_free", "twin"] = "synthesis_free",
    model: RectifiedFlowModel | str | os.PathLike[str] | None = None,
    params: LesionGateParams | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> GateResult:
    """The lesion gate: did the pathology of `original` survive in `deidentified` (both uint8
    RGB, same size)? Returns the outcome (`result.accepted`, `result.outcome`), the IoU and both
    masks.

    ``method="synthesis_free"`` finds the lesion by its colour against the surrounding skin (no
    model); ``method="twin"`` by a healthy twin made with FlowEdit on `model` (the gateway's
    method). `params` gives all of the gate's settings (threshold, mask parameters, and then its
    own method)."""
    from deid_core.lesion.gate import GateMethod, LesionGate, LesionGateParams
    from deid_core.lesion.synthesis import flowedit_twins

    gate_params = params or LesionGateParams(method=GateMethod(method))
    twins = None
    if gate_params.method is GateMethod.TWIN:
        if model is None:
            raise ConfigError('check_lesion: method "twin" needs a model')
        twins = flowedit_twins(_model(model, device), twin_long_side=gate_params.twin_long_side)
    return LesionGate(gate_params, twins).check(original, deidentified, seed)

"""The C (clean) action on text: keep only words known not to identify anyone.

PS3.15 asks that a cleaned descriptor keep its meaning without identifying information. Finding
names, dates and places in free text needs a trusted language model, which this project does not
ship; so cleaning is an allow-list instead of a deny-list. A descriptor keeps only its tokens that
belong to a fixed imaging vocabulary (modalities, sequences, planes, contrast, anatomy from DICOM
CID 4031, common technique words); every other token — names, numbers, dates, identifiers, words we
do not know — is dropped. "T1 AX POST GAD brain" survives whole; "Scan for John Smith 12/03" keeps
only "Scan for". The cost of this rule is lost words, never a leaked name.

Codes in code sequences are not free text and are kept by the sequence rules, not here.
"""

from __future__ import annotations

import re
from functools import cache

#: Imaging technique and report vocabulary (lower case). Deliberately no proper nouns: eponyms
#: (e.g. disease names after people) would double as surnames.
_JARGON = """
an and or of the for with without to in on at by from no not per post pre prior after before
axial ax sagittal sag coronal cor oblique obl transverse tra trans plane planes view views
ap pa lat lateral medial left right lt rt bilateral bilat both upper lower anterior posterior
superior inferior proximal distal frontal ventral dorsal cranial caudal mip mpr vr recon reformat
reformats reconstruction reconstructed thin thick slice slices series image images study scan
scans survey scout localizer locator loc topogram tracker bolus test timing delayed delay
early late arterial venous portal phase phases equilibrium nephrographic excretory washout
contrast iv oral enhanced unenhanced noncontrast non gad gd gadolinium dynamic perfusion diffusion
dwi dti adc trace tensor flair stir t1 t2 t2star pd pdw swi mra mrv tof pc cine mprage spgr fspgr
gre se fse tse epi haste space vibe lava thrive bravo fiesta trufi ssfp bold fmri mrs spectroscopy
fat sat fs water dixon inphase outphase opp in out ir mt hr hires highres lowres high low res
resolution standard soft tissue bone lung mediastinal window kernel sharp smooth filtered
ct mr mri cr dx mg us pt pet nm spect xa rf ot sc sr doc seg rtstruct rtdose rtplan ecg
dose report summary key object structured measurement measurements
screening diagnostic routine protocol exam examination procedure follow followup up
3d 2d 4d 1d b0 b50 b100 b500 b800 b1000 b1500 b2000 b3000 mm cm ms sec
photo photograph photography photographic dermoscopy dermoscopic clinical lesion skin macro
overview close closeup polarized nonpolarized nonpolarised polarised contact immersion
whole slide label thumbnail macro micro microscopy microscopic pathology specimen stain ihc
original derived primary secondary axial_series volume volumetric helical spiral sequential
cardiac gated ecg triggered breath hold breathhold free breathing respiratory prone supine
head first feet decubitus erect standing sitting weight bearing flexion extension stress
angiography angio venography arthrogram myelogram urogram enterography colonography
calcium score scoring attenuation correction corrected uncorrected ac nac
mammography mammo tomosynthesis dbt cc mlo ml xccl spot mag magnification implant displaced
ultrasound doppler color colour power elastography shear wave mode
brain spine spinal cord orbit orbits sinuses iac cervical kidney kidneys renal adrenal aorta
aortic carotid coronary pulmonary thyroid pituitary vessels vascular abdominal pelvic cardiac
coerce correct corrected
thorax thoracic lumbar sacral extremities joints soft tissues whole body wb chest abdomen pelvis
""".split()  # noqa: SIM905 - a word list reads best as text


@cache
def vocabulary() -> frozenset[str]:
    """The allow-list: the jargon above plus the words of DICOM CID 4031 anatomic regions."""
    words = set(_JARGON)
    try:
        from pydicom.sr._cid_dict import cid_concepts

        for keyword in cid_concepts.get(4031, {}).get("SCT", []):
            words.update(w.lower() for w in re.findall(r"[A-Z][a-z]+|[A-Z]+(?![a-z])", keyword))
    except ImportError:  # pragma: no cover - an older pydicom without the CID tables
        pass
    return frozenset(words)


_TOKEN = re.compile(r"[A-Za-z0-9]+")


def clean_text(value: str) -> str:
    """Keep the allowed tokens of `value`, in order, separated by single spaces ("" if none).

    Only ASCII letters and digits can survive, so the result is valid in every character set."""
    allowed = vocabulary()
    kept = [t for t in _TOKEN.findall(value) if t.lower() in allowed]
    return " ".join(kept)


__all__ = ["clean_text", "vocabulary"]

"""Attribute Types per IOD, where known, to settle the table's combined actions (X/Z/D ...).

PS3.15 lets an attribute be removed only where the IOD allows its absence: X for Type 3, Z for
Type 2, D for Type 1. This module knows, for the IODs a gateway sees most (CT, MR, CR, DX, MG, US,
SC, NM, PET, XA, VL photographs and slides, SR, encapsulated documents, segmentations, waveforms,
RT), the Type of the attributes whose action depends on it. It was transcribed from PS3.3 by module,
so each IOD lists its modules and each module the Types it sets.

Where the IOD or the attribute is not known here, `attribute_type` returns the most demanding Type
the attribute has in any module listed: the outcome stays conformant (a present attribute is only
emptied or given a dummy value, never removed where some IOD needs it), and none of X, Z, D or U
keeps identifying content, so the choice never costs privacy. Items inside sequences use that
fallback too (the Types inside macros differ by context).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.datadict import tag_for_keyword

# --- Modules (PS3.3 Annex C): keyword -> Type (1C/2C written as 1/2) ---------------------------

_MODULES: dict[str, dict[str, int]] = {
    "Patient": {"PatientID": 2, "PatientSexNeutered": 2},
    "GeneralStudy": {"ReferencedStudySequence": 3, "RequestedProcedureDescription": 3},
    "GeneralSeries": {
        "SeriesDate": 3,
        "SeriesTime": 3,
        "OperatorsName": 3,
        "OperatorIdentificationSequence": 3,
        "ProtocolName": 3,
        "ReferencedPerformedProcedureStepSequence": 3,
    },
    "EnhancedSeries": {"ReferencedPerformedProcedureStepSequence": 1},
    "SegmentationSeries": {"ReferencedPerformedProcedureStepSequence": 1},
    "SRDocumentSeries": {
        "SeriesDate": 3,
        "SeriesTime": 3,
        "ProtocolName": 3,
        "ReferencedPerformedProcedureStepSequence": 2,
    },
    "RTSeries": {"OperatorsName": 2, "ReferencedPerformedProcedureStepSequence": 3},
    "GeneralEquipment": {"InstitutionName": 3, "StationName": 3, "DeviceSerialNumber": 3},
    "EnhancedGeneralEquipment": {"DeviceSerialNumber": 1},
    "GeneralImage": {
        "ContentDate": 2,
        "ContentTime": 2,
        "AcquisitionDate": 3,
        "AcquisitionTime": 3,
        "AcquisitionDateTime": 3,
        "ReferencedImageSequence": 3,
        "SourceImageSequence": 3,
        "ImageComments": 3,
    },
    "MultiFrameFunctionalGroups": {"ContentDate": 1, "ContentTime": 1},
    "EnhancedImage": {"AcquisitionDateTime": 1},
    "VLImage": {"AcquisitionDateTime": 1},
    "ContrastBolus": {"ContrastBolusAgent": 2},
    "SOPCommon": {"InstanceCreationDate": 3, "InstanceCreationTime": 3},
    "AcquisitionContext": {"AcquisitionContextSequence": 2},
    "SlideLabel": {"LabelText": 2, "BarcodeValue": 2},
    "DXDetector": {
        "DetectorID": 3,
        "DateOfLastDetectorCalibration": 3,
        "TimeOfLastDetectorCalibration": 3,
    },
    "DXImage": {"AcquisitionDeviceProcessingDescription": 3},
    "SRDocumentGeneral": {
        "ContentDate": 1,
        "ContentTime": 1,
        "ReferencedRequestSequence": 1,
        "PerformedProcedureCodeSequence": 2,
    },
    # Content items (nested): TextValue is required where the value type is TEXT.
    "SRDocumentContent": {"TextValue": 1, "ObservationDateTime": 1},
    "EncapsulatedDocument": {
        "ContentDate": 2,
        "ContentTime": 2,
        "AcquisitionDateTime": 2,
        "DocumentTitle": 2,
    },
    "WaveformIdentification": {"ContentDate": 1, "ContentTime": 1, "AcquisitionDateTime": 1},
    "WaveformAnnotation": {"WaveformAnnotationSequence": 1},
    "RTGeneralPlan": {"RTPlanDate": 2, "RTPlanTime": 2},
    # Nested in Beam Sequence / Ion Beam Sequence.
    "RTBeams": {"TreatmentMachineName": 2},
    "Approval": {"ReviewerName": 2},
    "RTTreatmentSummaryRecord": {"FirstTreatmentDate": 2, "MostRecentTreatmentDate": 2},
    "RTGeneralTreatmentRecord": {"TreatmentDate": 2, "TreatmentTime": 2},
    "RTTreatmentMachineRecord": {"SourceSerialNumber": 3},
    "RTPrescription": {"IntendedPhaseStartDate": 3, "IntendedPhaseEndDate": 3},
    # Content Identification macro (presentation states, segmentations, ...).
    "PresentationStateIdentification": {"ContentCreatorName": 2, "ContentDescription": 2},
    # Derivation Image macro (functional groups of enhanced IODs, nested).
    "DerivationImage": {"SourceImageSequence": 2, "DerivationDescription": 3},
    "Specimen": {"ContainerIdentifier": 1},
    # HL7v2 Hierarchic Designator macro (issuers, nested): one of the two IDs is required.
    "HL7v2HierarchicDesignator": {"LocalNamespaceEntityID": 1, "UniversalEntityID": 1},
    # Text attributes outside Table E.1-1 that are required inside sequence items (macros and
    # functional groups): removed text must be dummied or emptied there. Used as fallback only.
    "RequiredNestedText": {
        "SegmentLabel": 1,  # Segment Description Macro
        "OpticalPathIdentifier": 1,  # Optical Path Module (whole slide)
        "ROIName": 2,  # Structure Set ROI Sequence
        "BeamName": 1,  # RT Ion Beams (Type 3 in RT Beams)
    },
}

_IMAGE = ("Patient", "GeneralStudy", "GeneralSeries", "GeneralEquipment", "GeneralImage")
_ENHANCED = (
    "DerivationImage",
    "Patient",
    "GeneralStudy",
    "EnhancedSeries",
    "GeneralEquipment",
    "EnhancedGeneralEquipment",
    "MultiFrameFunctionalGroups",
    "EnhancedImage",
    "ContrastBolus",
)
_SR = ("Patient", "GeneralStudy", "SRDocumentSeries", "GeneralEquipment", "SRDocumentGeneral")
_VL = (*_IMAGE, "VLImage", "AcquisitionContext")
_RT = ("Patient", "GeneralStudy", "RTSeries", "GeneralEquipment", "Approval")

_WAVEFORM = (
    "Patient",
    "GeneralStudy",
    "GeneralSeries",
    "GeneralEquipment",
    "WaveformIdentification",
    "WaveformAnnotation",
)
_DOCUMENT = ("Patient", "GeneralStudy", "GeneralSeries", "GeneralEquipment", "EncapsulatedDocument")

#: SOP Class UID -> (IOD name, modules). The IOD name appears in `explain` reasons.
IODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "1.2.840.10008.5.1.4.1.1.1": ("CR Image", (*_IMAGE, "ContrastBolus")),
    "1.2.840.10008.5.1.4.1.1.1.1": ("Digital X-Ray Image", (*_IMAGE, "DXDetector", "DXImage")),
    "1.2.840.10008.5.1.4.1.1.1.1.1": ("Digital X-Ray Image", (*_IMAGE, "DXDetector", "DXImage")),
    "1.2.840.10008.5.1.4.1.1.1.2": ("Digital Mammography", (*_IMAGE, "DXDetector", "DXImage")),
    "1.2.840.10008.5.1.4.1.1.1.2.1": ("Digital Mammography", (*_IMAGE, "DXDetector", "DXImage")),
    "1.2.840.10008.5.1.4.1.1.2": ("CT Image", (*_IMAGE, "ContrastBolus")),
    "1.2.840.10008.5.1.4.1.1.2.1": ("Enhanced CT Image", _ENHANCED),
    "1.2.840.10008.5.1.4.1.1.3.1": ("US Multi-frame Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.4": ("MR Image", (*_IMAGE, "ContrastBolus")),
    "1.2.840.10008.5.1.4.1.1.4.1": ("Enhanced MR Image", _ENHANCED),
    "1.2.840.10008.5.1.4.1.1.6.1": ("US Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.7": ("SC Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.7.1": ("Multi-frame SC Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.7.2": ("Multi-frame SC Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.7.3": ("Multi-frame SC Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.7.4": ("Multi-frame SC Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.9.1.1": ("12-lead ECG", _WAVEFORM),
    "1.2.840.10008.5.1.4.1.1.9.1.2": ("General ECG", _WAVEFORM),
    "1.2.840.10008.5.1.4.1.1.11.1": (
        "Grayscale Softcopy Presentation State",
        (
            "Patient",
            "GeneralStudy",
            "GeneralSeries",
            "GeneralEquipment",
            "PresentationStateIdentification",
        ),
    ),
    "1.2.840.10008.5.1.4.1.1.12.1": ("X-Ray Angiographic Image", (*_IMAGE, "ContrastBolus")),
    "1.2.840.10008.5.1.4.1.1.12.2": ("X-Ray RF Image", (*_IMAGE, "ContrastBolus")),
    "1.2.840.10008.5.1.4.1.1.20": ("NM Image", _IMAGE),
    "1.2.840.10008.5.1.4.1.1.66.4": (
        "Segmentation",
        (
            "Patient",
            "GeneralStudy",
            "SegmentationSeries",
            "GeneralEquipment",
            "EnhancedGeneralEquipment",
            "MultiFrameFunctionalGroups",
            "PresentationStateIdentification",
            "DerivationImage",
        ),
    ),
    "1.2.840.10008.5.1.4.1.1.77.1.1": ("VL Endoscopic Image", _VL),
    "1.2.840.10008.5.1.4.1.1.77.1.2": ("VL Microscopic Image", _VL),
    "1.2.840.10008.5.1.4.1.1.77.1.3": (
        "VL Slide-Coordinates Microscopic Image",
        (*_VL, "Specimen"),
    ),
    "1.2.840.10008.5.1.4.1.1.77.1.4": ("VL Photographic Image", _VL),
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": ("Ophthalmic Photography 8 Bit Image", _VL),
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": ("Ophthalmic Photography 16 Bit Image", _VL),
    "1.2.840.10008.5.1.4.1.1.77.1.6": (
        "VL Whole Slide Microscopy Image",
        (
            "Patient",
            "GeneralStudy",
            "GeneralSeries",
            "GeneralEquipment",
            "EnhancedGeneralEquipment",
            "MultiFrameFunctionalGroups",
            "AcquisitionContext",
            "Specimen",
            "SlideLabel",
            "HL7v2HierarchicDesignator",
        ),
    ),
    "1.2.840.10008.5.1.4.1.1.77.1.7": ("Dermoscopic Photography Image", _VL),
    "1.2.840.10008.5.1.4.1.1.88.11": ("Basic Text SR", _SR),
    "1.2.840.10008.5.1.4.1.1.88.22": ("Enhanced SR", _SR),
    "1.2.840.10008.5.1.4.1.1.88.33": ("Comprehensive SR", _SR),
    "1.2.840.10008.5.1.4.1.1.88.34": ("Comprehensive 3D SR", _SR),
    "1.2.840.10008.5.1.4.1.1.88.59": ("Key Object Selection Document", _SR),
    "1.2.840.10008.5.1.4.1.1.88.67": ("X-Ray Radiation Dose SR", _SR),
    "1.2.840.10008.5.1.4.1.1.104.1": ("Encapsulated PDF", _DOCUMENT),
    "1.2.840.10008.5.1.4.1.1.104.2": ("Encapsulated CDA", _DOCUMENT),
    "1.2.840.10008.5.1.4.1.1.128": ("PET Image", (*_IMAGE, "ContrastBolus")),
    "1.2.840.10008.5.1.4.1.1.481.1": ("RT Image", (*_RT, "ContrastBolus")),
    "1.2.840.10008.5.1.4.1.1.481.2": ("RT Dose", _RT),
    "1.2.840.10008.5.1.4.1.1.481.3": ("RT Structure Set", _RT),
    "1.2.840.10008.5.1.4.1.1.481.4": (
        "RT Beams Treatment Record",
        (*_RT, "RTGeneralTreatmentRecord", "RTTreatmentMachineRecord"),
    ),
    "1.2.840.10008.5.1.4.1.1.481.5": ("RT Plan", (*_RT, "RTGeneralPlan", "RTBeams")),
    "1.2.840.10008.5.1.4.1.1.481.7": (
        "RT Treatment Summary Record",
        (*_RT, "RTGeneralTreatmentRecord", "RTTreatmentSummaryRecord"),
    ),
    "1.2.840.10008.5.1.4.1.1.481.8": ("RT Ion Plan", (*_RT, "RTGeneralPlan", "RTBeams")),
}


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"unknown DICOM keyword {keyword!r} in deid_core.iod")
    return int(tag)


_MODULE_TAGS: dict[str, dict[int, int]] = {
    name: {_tag(k): t for k, t in types.items()} for name, types in _MODULES.items()
}


def _fallback() -> dict[int, int]:
    types: dict[int, int] = {}
    for module in _MODULE_TAGS.values():
        for tag, t in module.items():
            types[tag] = min(t, types.get(tag, 3))
    return types


#: Most demanding Type of each attribute over every module above.
FALLBACK_TYPES: Mapping[int, int] = _fallback()


def iod_name(sop_class_uid: str) -> str | None:
    entry = IODS.get(sop_class_uid)
    return entry[0] if entry else None


def iod_types(sop_class_uid: str) -> dict[int, int] | None:
    """Tag -> Type for one IOD, or None when the IOD is not known here."""
    entry = IODS.get(sop_class_uid)
    if entry is None:
        return None
    types: dict[int, int] = {}
    for module in ("SOPCommon", *entry[1]):
        for tag, t in _MODULE_TAGS[module].items():
            types[tag] = min(t, types.get(tag, 3))
    return types


def attribute_type(tag: int, types: Mapping[int, int] | None) -> int | None:
    """Type of the attribute in the IOD (`types` from `iod_types`), else the conservative
    fallback."""
    if types is not None:
        t = types.get(tag)
        if t is not None:
            return t
    return FALLBACK_TYPES.get(tag)


__all__ = ["FALLBACK_TYPES", "IODS", "attribute_type", "iod_name", "iod_types"]

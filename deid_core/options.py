"""The options of the Basic Application Level Confidentiality Profile (PS3.15 E.3), with their
CID 7050 codes and the column each one has in Table E.1-1."""

from __future__ import annotations

from enum import StrEnum


class ProfileOption(StrEnum):
    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain_longitudinal_full_dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_GRAPHICS = "clean_graphics"
    #: Honoured by the pixel steps, not by the attribute table.
    CLEAN_PIXEL_DATA = "clean_pixel_data"
    #: Honoured by the pixel steps (FlowEdit on photographs), not by the attribute table.
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "clean_recognizable_visual_features"


#: CID 7050 "De-identification Method" code values (scheme DCM).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")

OPTION_CODES: dict[ProfileOption, tuple[str, str]] = {
    ProfileOption.CLEAN_PIXEL_DATA: ("113101", "Clean Pixel Data Option"),
    ProfileOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: (
        "113102",
        "Clean Recognizable Visual Features Option",
    ),
    ProfileOption.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    ProfileOption.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    ProfileOption.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    ProfileOption.RETAIN_LONGITUDINAL_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: (
        "113108",
        "Retain Patient Characteristics Option",
    ),
    ProfileOption.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    ProfileOption.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    ProfileOption.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    ProfileOption.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

#: Table E.1-1 column of each option that has one.
TABLE_COLUMNS: dict[ProfileOption, str] = {
    ProfileOption.RETAIN_SAFE_PRIVATE: "rtn_safe_priv_opt",
    ProfileOption.RETAIN_UIDS: "rtn_uids_opt",
    ProfileOption.RETAIN_DEVICE_IDENTITY: "rtn_dev_id_opt",
    ProfileOption.RETAIN_INSTITUTION_IDENTITY: "rtn_inst_id_opt",
    ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: "rtn_pat_chars_opt",
    ProfileOption.RETAIN_LONGITUDINAL_FULL_DATES: "rtn_long_full_dates_opt",
    ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: "rtn_long_modif_dates_opt",
    ProfileOption.CLEAN_DESCRIPTORS: "clean_desc_opt",
    ProfileOption.CLEAN_STRUCTURED_CONTENT: "clean_struct_cont_opt",
    ProfileOption.CLEAN_GRAPHICS: "clean_graph_opt",
}

#: Pairs the standard does not allow together.
MUTUALLY_EXCLUSIVE: tuple[tuple[ProfileOption, ProfileOption], ...] = (
    (
        ProfileOption.RETAIN_LONGITUDINAL_FULL_DATES,
        ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    ),
)

"""The gateway inside other systems: the Orthanc plugin (`orthanc_plugin`, loaded by
`orthanc_entry.py`)."""

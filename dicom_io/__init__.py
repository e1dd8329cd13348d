"""dicom_io: the only importer of pynetdicom. DICOM files, pixels, the SCP and the SCU."""

"""A "modality" for the demo and the tests: a DX file as an X-ray unit writes it, sent by C-STORE (pynetdicom SCU).

The patient attributes are made up; they exist so that the demo and the tests can show they never leave the
hospital's own storage and its PACS.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["dx_file", "send_by_cstore"]


def dx_file(pixels: np.ndarray, *, patient_name: str, patient_id: str, birth_date: str, accession: str) -> bytes:
    """A Digital X-Ray (for presentation) file, 16-bit MONOCHROME2 (12 bits stored), fresh study / series /
    instance UIDs, with preamble; `pixels` are the stored values (uint16 in [0, 4095])."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, birth_date, "F"
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = accession, "1", "20260101", "101500"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.asarray(pixels, np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def send_by_cstore(data: bytes, host: str, port: int, *, called_ae: str, calling_ae: str = "DEMOMODALITY",
                   timeout_s: float = 30.0) -> int:
    """C-STORE one DICOM file; returns the status code (0 = stored), -1 when no association or no answer."""
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_store(ds)
        return int(getattr(status, "Status", -1))
    finally:
        assoc.release()

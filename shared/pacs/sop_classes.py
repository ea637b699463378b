"""What xray-triage accepts over DICOM: the chest radiograph SOP classes and the transfer syntaxes its decoder reads.

The model judges plain chest radiographs, so a Storage SCP (the receiver) or STOW-RS accepts Computed Radiography
and Digital X-Ray (for presentation and for processing) only; anything else is refused at negotiation (no
presentation context) rather than stored and failed later. The transfer syntaxes are those `shared.dicom` decodes
with the installed pydicom plugins (pydicom itself, pillow, python-gdcm, pyjpegls): uncompressed little endian,
deflate, JPEG (baseline, extended, lossless), JPEG-LS, JPEG 2000 and RLE.
"""

from __future__ import annotations

from pydicom import uid

__all__ = ["CHEST_RADIOGRAPH_SOP_CLASSES", "DECODABLE_TRANSFER_SYNTAXES"]

CHEST_RADIOGRAPH_SOP_CLASSES: tuple[uid.UID, ...] = (
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing,
)
# The uncompressed ones first: an SCU that offers several in one context gets the cheapest to read.
DECODABLE_TRANSFER_SYNTAXES: tuple[uid.UID, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)

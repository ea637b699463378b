"""12-bit lossy JPEG (JPEG Extended, process 4; 1.2.840.10008.1.2.4.51) decoded through GDCM: a pydicom decoder plugin.

Computed radiography archives hold many chest films in this transfer syntax. pydicom's own GDCM plugin declines
12-bit samples (GDCM's decoder first tries the codec its Bits Allocated names, 16, logs "Unsupported JPEG data
precision" to the native stderr and falls back to its 12-bit codec), Pillow has no 12-bit libjpeg, and the other
pydicom codec for it (pylibjpeg-libjpeg) is GPL. GDCM (BSD, already the decoder of the lossless syntaxes) does decode
it: this plugin hands it the frame with the sample container named by its precision (12 bits, the codec GDCM then
picks first), so nothing is written to stderr; the frame comes back as 16-bit samples. Its output equals DCMTK's
`dcmdjpeg` sample for sample (tests). 8-bit JPEG Extended is left to the stock plugins (this one declines it).

`register()` adds the plugin to pydicom's JPEG Extended decoder once per process (pydicom's `add_plugin` is not
thread-safe: the first caller does it under a lock). The plugin interface is pydicom's (`is_available`,
`DECODER_DEPENDENCIES`, a frame decoding function).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["DECODER_DEPENDENCIES", "JPEG_EXTENDED", "PLUGIN_LABEL", "decode_frame", "is_available", "register"]

PLUGIN_LABEL = "gdcm-12bit"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"  # pydicom.uid.JPEGExtended12Bit, without importing pydicom here
DECODER_DEPENDENCIES = {JPEG_EXTENDED: ("gdcm",)}

_REGISTER = threading.Lock()
_registered = False


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin check: GDCM importable and the syntax is JPEG Extended."""
    if transfer_syntax != JPEG_EXTENDED:
        return False
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def decode_frame(src: bytes, runner: Any) -> bytes:
    """One encoded JPEG Extended frame → its samples (little-endian, 16 bits each); precision 8 is declined."""
    import gdcm

    bits = int(runner.bits_stored)
    if bits <= 8:
        raise NotImplementedError("8-bit JPEG Extended is decoded by pydicom's stock plugins")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    pixel_data = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    pixel_data.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((int(runner.columns), int(runner.rows), 1))
    image.SetDataElement(pixel_data)
    photometric = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    if int(runner.samples_per_pixel) > 1:
        image.SetPlanarConfiguration(int(runner.planar_configuration))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    # The container named by the precision (module docstring): GDCM's 12-bit codec first, no native stderr line.
    image.SetPixelFormat(gdcm.PixelFormat(int(runner.samples_per_pixel), 12, bits, bits - 1,
                                          int(runner.pixel_representation)))  # fmt: skip
    frame = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM returns char* as str
    expected = int(runner.rows) * int(runner.columns) * int(runner.samples_per_pixel) * 2
    if len(frame) != expected:
        raise ValueError(f"the 12-bit JPEG stream decoded to {len(frame)} bytes, not the {expected} its size needs")
    return frame


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder (once per process; later calls return at once)."""
    global _registered
    if _registered:
        return
    with _REGISTER:
        if _registered:
            return
        from pydicom.pixels.decoders import JPEGExtended12BitDecoder

        JPEGExtended12BitDecoder.add_plugin(PLUGIN_LABEL, (__name__, "decode_frame"))
        _registered = True

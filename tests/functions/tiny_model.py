"""Test inputs for the serving tests: a tiny random-weight ViT exported as a model directory, and image bytes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TINY_CONFIG = {"image_size": 28, "patch": 7, "dim": 32, "depth": 2, "heads": 2}


def build_tiny_model_dir(out_dir: Path, *, seed: int = 0) -> Path:
    """A model directory (model.onnx, model.int8.onnx, model_card.json) of a random-weight 28x28 ViT."""
    import torch

    from training_jobs.export import export_model_dir
    from training_jobs.vit import ViT, ViTConfig

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = ViT(ViTConfig(**TINY_CONFIG)).eval()
    export_model_dir(model, out_dir, temperature=1.0, threshold=0.5)
    return out_dir


def build_gated_model_dir(out_dir: Path, *, seed: int = 0, n_train: int = 160, n_val: int = 120) -> Path:
    """The tiny random-weight ViT exported with the not-assessable gate, its reference fitted on SYNTHETIC phantoms
    (train: `n_train` of seed 11, the threshold on `n_val` of seed 12; `gated_phantoms` draws others)."""
    import torch

    from shared.imaging import batch_to_model_input
    from training_jobs.export import export_model_dir
    from training_jobs.phantom import make_phantoms
    from training_jobs.vit import ViT, ViTConfig

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = ViT(ViTConfig(**TINY_CONFIG)).eval()
    train_x, train_y = make_phantoms(n_train, 28, seed=11)
    val_x, val_y = make_phantoms(n_val, 28, seed=12)
    export_model_dir(model, out_dir, temperature=1.0, threshold=0.5, gate_x=batch_to_model_input(train_x, 28),
                     gate_y=train_y, calibration_x=batch_to_model_input(val_x, 28), calibration_y=val_y)
    return out_dir


def gated_phantoms(n: int, seed: int = 13) -> np.ndarray:
    """uint8 [n, 28, 28] SYNTHETIC phantoms of the gated model's training distribution, unseen by its export."""
    from training_jobs.phantom import make_phantoms

    images, _ = make_phantoms(n, 28, seed=seed)
    return images


def gray_image(size: int = 28, seed: int = 0) -> np.ndarray:
    """A smooth uint8 gray image with a bright blob (something a saliency map can point at)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    blob = np.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.02)
    return np.clip(255 * (0.3 * x + 0.6 * blob) + rng.normal(0, 4, (size, size)), 0, 255).astype(np.uint8)


def png_bytes(size: int = 28, *, width: int | None = None, bits: int = 8, seed: int = 0) -> bytes:
    image = gray_image(size, seed)
    if width is not None:
        image = np.asarray(Image.fromarray(image).resize((width, size)))
    pil = Image.fromarray(image.astype(np.uint16) * 257) if bits == 16 else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: int = 28, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray_image(size, seed)).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def dicom_bytes(size: int = 28, *, patient_name: str = "DOE^JANE", patient_id: str = "PID-12345") -> bytes:
    """A 16-bit MONOCHROME2 DICOM file with patient identifiers in it."""
    from pydicom.uid import ExplicitVRLittleEndian

    dataset = _grey_secondary_capture(ExplicitVRLittleEndian, size, bits=(16, 12))
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.PatientBirthDate = "19700101"
    dataset.PixelData = (gray_image(size).astype(np.uint16) * 16).tobytes()
    return _saved(dataset)


def _grey_secondary_capture(transfer_syntax: str, size: int, *, bits: tuple[int, int]) -> Any:
    """A MONOCHROME2 CR secondary capture data set without pixel data: `bits` (allocated, stored)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CR"
    dataset.Rows = dataset.Columns = size
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = bits[0], bits[1], bits[1] - 1
    dataset.PixelRepresentation = 0
    return dataset


def _saved(dataset: Any) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def jpeg_dicom_bytes(size: int = 28, *, hostile: bool = False) -> bytes:
    """An 8-bit MONOCHROME2 DICOM with JPEG baseline pixel data (a PACS's lossy export), decoded by GDCM here.

    `hostile`: three stray bytes between two markers of the JPEG header. libjpeg only warns ("extraneous bytes
    before marker"), but GDCM asserts on any warning while it reads the header: a C++ exception nothing catches,
    and the process that decodes it aborts (SIGABRT)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    stream = io.BytesIO()
    Image.fromarray(gray_image(size)).save(stream, format="JPEG", quality=95)
    jpeg = stream.getvalue()
    if hostile:
        second = jpeg.index(b"\xff", 2 + 2 + int.from_bytes(jpeg[4:6], "big"))  # the marker after APP0
        jpeg = jpeg[:second] + b"\x00\x01\x02" + jpeg[second:]
    dataset = _grey_secondary_capture(JPEGBaseline8Bit, size, bits=(8, 8))
    dataset.PixelData = encapsulate([jpeg])
    dataset["PixelData"].VR = "OB"
    return _saved(dataset)


def j2k_bomb_dicom_bytes(side: int = 40_000) -> bytes:
    """A 64 x 64 DICOM whose JPEG 2000 codestream (a few hundred bytes) declares side x side pixels in its SIZ
    marker: the size check reads the DICOM's Rows and Columns, and the codec allocates what the codestream says
    (6.4 GB resident for 40,000 a side before it finds the data missing)."""
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    stream = io.BytesIO()
    Image.new("L", (64, 64)).save(stream, format="JPEG2000", irreversible=False, no_jp2=True)
    codestream = bytearray(stream.getvalue())
    siz = codestream.index(b"\xff\x51")  # Lsiz, Rsiz, then Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz
    struct.pack_into(">IIIIII", codestream, siz + 6, side, side, 0, 0, side, side)
    dataset = _grey_secondary_capture(JPEG2000Lossless, 64, bits=(8, 8))
    dataset.PixelData = encapsulate([bytes(codestream)])
    dataset["PixelData"].VR = "OB"
    return _saved(dataset)


def png_bomb(side: int = 100_000) -> bytes:
    """A valid-looking PNG whose header declares side x side pixels but carries almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )

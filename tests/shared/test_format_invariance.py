"""The same radiograph answers the same in every form a hospital sends it (issue 11 item 3): a 28 x 28 PNG, a large
PNG, a 16-bit PNG (of 16- or 12-bit values), a JPEG, and DICOMs of 8 / 12 / 16 bits with rescale slope / intercept,
a VOI window or LUT, MONOCHROME1 or MONOCHROME2, a 12-bit film declared 16-bit — the same label and a probability
within 0.02 of the reference form."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import Settings
from shared.model import TriageModel
from training_jobs.phantom import DICOM_VARIANTS, PhantomDicomSpec, make_phantom, write_phantom_dicom

TOLERANCE = 0.02
SIZE = 224  # the acquisition the forms are made from (PneumoniaMNIST's 28 x 28 is a downsampled chest film)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TriageModel:
    """A tiny random-weight ViT whose classifier head is scaled and centred on phantoms, so its probability moves
    across the whole range with the image (checked below) and agreement across forms is a real check."""
    import torch

    from shared.imaging import batch_to_model_input
    from training_jobs.phantom import make_phantoms
    from training_jobs.vit import ViT, ViTConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=28, patch=7, dim=32, depth=2, heads=2)).eval()
    images, _ = make_phantoms(64, 28, seed=5)
    with torch.no_grad():
        logits, _ = vit(torch.from_numpy(batch_to_model_input(images, 28)))
        margin = logits[:, 1] - logits[:, 0]
        scale = 2.0 / float(margin.std())  # margins of about +-2: probabilities from ~0.1 to ~0.9
        vit.head.weight.mul_(scale)
        vit.head.bias.mul_(scale)
        vit.head.bias[1] -= float(margin.median()) * scale
    from training_jobs.export import export_model_dir

    directory = tmp_path_factory.mktemp("model") / "model"
    export_model_dir(vit.eval(), directory, threshold=0.5)
    loaded = TriageModel(Settings(model_uri=str(directory), model_cache_dir=tmp_path_factory.mktemp("cache")))
    loaded.load()
    return loaded


def _png(image: np.ndarray, size: int, bits: int = 8) -> bytes:
    if bits > 8:
        pil = Image.fromarray(np.round(image * (2**bits - 1)).astype(np.uint16))
    else:
        pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
    if size != image.shape[0]:
        pil = pil.resize((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    pil.save(out, format="PNG")
    return out.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _dicom(image: np.ndarray, spec: PhantomDicomSpec, path: Path) -> bytes:
    return write_phantom_dicom(path, image, spec).read_bytes()


def forms(image: np.ndarray, tmp: Path) -> dict[str, tuple[bytes, str]]:
    made = {
        "png-28": (_png(image, 28), "image/png"),
        "png-224": (_png(image, SIZE), "image/png"),
        "png-1536": (_png(image, 1536), "image/png"),
        "png-16bit": (_png(image, SIZE, bits=16), "image/png"),
        "png-16bit-of-12bit-values": (_png(image, SIZE, bits=12), "image/png"),  # DICOM pixels exported unscaled
        "jpeg-q95": (_jpeg(image), "image/jpeg"),
    }
    for i, spec in enumerate(DICOM_VARIANTS):
        name = f"dicom-{spec.bits}bit-{spec.photometric.lower()}" + ("-rescale" if spec.rescale else "") + (
            "-window" if spec.window else "") + ("-voilut" if spec.voi_lut else "") + ("-signed" if spec.signed else "")
        made[name] = (_dicom(image, spec, tmp / f"{i}.dcm"), "application/dicom")
    made["dicom-12bit-declared-16bit"] = (_declared_16_bits(_dicom(image, PhantomDicomSpec(bits=12), tmp / "12.dcm")),
                                          "application/dicom")
    return made


def _declared_16_bits(data: bytes) -> bytes:
    """A 12-bit film as many writers store it: BitsStored 16, no window (`shared.dicom._stored_bits`)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    assert "WindowCenter" not in ds and int(ds.pixel_array.max()) < 4096
    ds.BitsStored, ds.HighBit = 16, 15
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("seed,pneumonia", [(0, False), (1, True), (2, False), (3, True)])
def test_every_form_of_one_radiograph_gets_the_same_answer(model, tmp_path, seed, pneumonia):
    image = make_phantom(np.random.default_rng(seed), SIZE, pneumonia).astype(np.float64)
    answers = {name: model(data, content_type) for name, (data, content_type) in forms(image, tmp_path).items()}
    reference = answers["png-224"]
    assert {"png-28", "png-1536", "jpeg-q95"} <= set(answers) and sum(n.startswith("dicom") for n in answers) >= 6
    for name, answer in answers.items():
        assert answer.label == reference.label, name
        assert abs(answer.probability - reference.probability) <= TOLERANCE, (name, answer.probability,
                                                                             reference.probability)


def test_the_check_is_not_vacuous_the_model_tells_radiographs_apart(model):
    """Probabilities of different phantoms differ by more than the tolerance, so agreement above means something."""
    probabilities = [model(_png(make_phantom(np.random.default_rng(s), SIZE, bool(s % 2)), SIZE), "image/png")
                     .probability for s in range(12)]
    assert max(probabilities) - min(probabilities) > 5 * TOLERANCE

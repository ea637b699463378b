"""A generated DX (Digital X-Ray for presentation) carrying made-up patient identifiers, as a modality sends it."""

from __future__ import annotations

import numpy as np

from triage.stack.modality import dx_file

__all__ = ["ACCESSION", "BIRTH_DATE", "IDENTIFIERS", "PATIENT_ID", "PATIENT_NAME", "generated_dx"]

PATIENT_NAME = "EXPORTTEST^PATIENT"
PATIENT_ID = "PID-EXPORT-7731"
BIRTH_DATE = "19610203"
ACCESSION = "ACC-EXPORT-5521"
IDENTIFIERS = (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, ACCESSION)


def generated_dx(rows: int = 64, columns: int = 64, seed: int = 0) -> bytes:
    """A 16-bit MONOCHROME2 DX file (with preamble) with fresh study / series / instance UIDs."""
    pixels = np.random.default_rng(seed).integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    return dx_file(pixels, patient_name=PATIENT_NAME, patient_id=PATIENT_ID, birth_date=BIRTH_DATE,
                   accession=ACCESSION)

"""The receiver's settings (AE title, port, allow-list, limits) and what it negotiates, without a network."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, Settings
from shared.names import dicom_instance_key
from shared.pacs.receiver import application_entity
from shared.pacs.sop_classes import CHEST_RADIOGRAPH_SOP_CLASSES, DECODABLE_TRANSFER_SYNTAXES


def test_defaults_are_the_design_s():
    settings = Settings.from_env({})
    assert (settings.dicom_ae_title, settings.dicom_port, settings.dicom_allowed_aes) == ("XRAYTRIAGE", 11112, ())


def test_settings_come_from_the_environment():
    settings = Settings.from_env({"DICOM_AE_TITLE": " TRIAGE1 ", "DICOM_PORT": "4104",
                                  "DICOM_ALLOWED_AES": "CR_ROOM1, DX-ROOM2,,", "DICOM_MAX_ASSOCIATIONS": "3",
                                  "DICOM_MAX_PDU_BYTES": "65536", "MAX_INPUT_BYTES": "33554432"})
    assert settings.dicom_ae_title == "TRIAGE1" and settings.dicom_port == 4104 and settings.max_input_bytes == 1 << 25
    assert settings.dicom_allowed_aes == ("CR_ROOM1", "DX-ROOM2")
    assert (settings.dicom_max_associations, settings.dicom_max_pdu_bytes) == (3, 65536)


@pytest.mark.parametrize(("name", "value"), [
    ("DICOM_AE_TITLE", "A" * 17), ("DICOM_AE_TITLE", "BAD\\AE"), ("DICOM_ALLOWED_AES", "OK,TOO-LONG-AE-TITLE-X"),
    ("DICOM_PORT", "70000"), ("DICOM_PORT", "x"), ("DICOM_MAX_ASSOCIATIONS", "0"), ("DICOM_MAX_PDU_BYTES", "-1"),
    ("MAX_INPUT_BYTES", "0"), ("MAX_INPUT_BYTES", "1.5"),
])
def test_a_bad_value_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_the_ae_negotiates_verification_and_the_chest_radiograph_classes_only():
    ae = application_entity(Settings(dicom_allowed_aes=("CR1",), dicom_max_associations=4,
                                     dicom_max_pdu_bytes=65536))
    offered = {str(cx.abstract_syntax): set(cx.transfer_syntax) for cx in ae.supported_contexts}
    assert set(offered) == {"1.2.840.10008.1.1", *map(str, CHEST_RADIOGRAPH_SOP_CLASSES)}
    assert "1.2.840.10008.5.1.4.1.1.2" not in offered  # CT
    for sop_class in CHEST_RADIOGRAPH_SOP_CLASSES:
        assert offered[str(sop_class)] == set(map(str, DECODABLE_TRANSFER_SYNTAXES))
    assert (ae.ae_title, ae.require_calling_aet, ae.maximum_associations, ae.maximum_pdu_size) == \
        ("XRAYTRIAGE", ["CR1"], 4, 65536)


def test_every_accepted_transfer_syntax_has_a_decoder_installed():
    from pydicom.pixels import get_decoder

    assert {str(ts) for ts in DECODABLE_TRANSFER_SYNTAXES} >= {
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"}
    for syntax in DECODABLE_TRANSFER_SYNTAXES:
        assert syntax.is_little_endian
        if syntax.is_compressed:
            assert get_decoder(syntax).is_available, syntax.name


def test_the_key_of_an_instance_hashes_its_uids():
    key = dicom_instance_key("1.2.3", "1.2.3.4")
    assert key.startswith("dicom/") and key.endswith(".dcm") and "1.2.3" not in key
    assert key == dicom_instance_key("1.2.3", "1.2.3.4") != dicom_instance_key("1.2.3", "1.2.3.5")

"""DICOM in and out of the hospital's PACS: the C-STORE receiver, STOW-RS ingest, and the export of results
(a DICOM SR and a Secondary Capture) back to the PACS. Each concern is its own module:

| module | what |
| --- | --- |
| `sop_classes` | the chest radiograph SOP classes and the transfer syntaxes the decoder reads |
| `instances` | a received instance checked (`check_instance`) and stored in inference-inputs (`store_instance`) |
| `receiver` | the Storage SCP + Verification (`python -m shared.pacs.receiver`) |
| `pdu_limits` | the receiver's bounds on what a peer sends, enforced as it arrives (PDU length, data set size) |
"""

__all__: list[str] = []

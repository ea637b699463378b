"""The Pulumi program's DICOM receiver under mocks: its ConfigGroup, and a security-group rule for its port open
to the configured hospital CIDRs only (none configured: none opened)."""

from __future__ import annotations

import json

import pytest

from infra_pulumi.config import InfraConfigError, load_config
from tests.infra.test_program import BASE_CONFIG, STACK_SECRETS, config_group_objects, run_program

HOSPITAL = {**BASE_CONFIG, "dicom_cidrs": json.dumps(["10.20.0.0/16", "172.16.5.0/24"]),
            "dicom_allowed_aes": "CR_ROOM1,PACS"}


def dicom_rules(mocks) -> list:
    return [r for r in mocks.of_type("openstack:networking/secGroupRule:SecGroupRule")
            if r.inputs.get("portRangeMin") == 11112]


def test_the_dicom_port_is_open_to_the_hospital_cidrs_only() -> None:
    mocks, outputs = run_program(HOSPITAL, STACK_SECRETS)
    rules = dicom_rules(mocks)
    assert {r.inputs["remoteIpPrefix"] for r in rules} == {"10.20.0.0/16", "172.16.5.0/24"}
    assert all(r.inputs["protocol"] == "tcp" and r.inputs["portRangeMax"] == 11112 for r in rules)
    objects = config_group_objects(mocks, "dicom-receiver-objects")
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.20.0.0/16", "172.16.5.0/24"]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DICOM_ALLOWED_AES"] == "CR_ROOM1,PACS"
    assert outputs["dicom_receiver"][0] == "XRAYTRIAGE@203.0.113.10:11112"
    assert any(r.typ == "xray-triage:infra:DicomReceiver" for r in mocks.resources)


def test_without_hospital_cidrs_the_dicom_port_stays_closed() -> None:
    mocks, _ = run_program(BASE_CONFIG, STACK_SECRETS)
    assert dicom_rules(mocks) == []
    assert config_group_objects(mocks, "dicom-receiver-objects")  # the receiver still runs, reachable in-cluster


@pytest.mark.parametrize(("key", "value"), [("dicom_cidrs", "10.20.0.0/33"), ("dicom_ae_title", "A" * 17),
                                            ("dicom_allowed_aes", "OK,BAD\\AE")])
def test_a_bad_dicom_setting_is_named(key, value) -> None:
    config = {**BASE_CONFIG, key: value}
    with pytest.raises(InfraConfigError, match=key):
        load_config(config.get, "test", lambda key: True)

"""MinIO webhook bodies and S3-in-SNS envelopes → created-object records → CloudEvents; webhook auth."""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest

from shared.errors import Forbidden, NotReady, Unauthorized, UserError
from shared.events import OBJECT_CREATED, EventDeliveryError, EventPublisher, event_from_http
from shared.s3_events import check_webhook_auth, forward_notification, parse_notification, unwrap_sns


def s3_record(bucket: str, key: str, etag: str = "0123abcd", name: str = "s3:ObjectCreated:Put") -> dict:
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventTime": "2026-11-26T10:00:00.123Z",
        "eventName": name,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1234, "eTag": etag}},
    }


def minio_body(*records: dict) -> bytes:
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": "x", "Records": list(records)}).encode()


def sns_body(s3_event: dict) -> bytes:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "m1",
            "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": json.dumps(s3_event),
            "Timestamp": "2026-11-26T10:00:01Z",
        }
    ).encode()


def test_minio_webhook_body_gives_one_record_per_created_object_with_decoded_keys():
    body = minio_body(
        s3_record("inference-inputs", "ward+3%2Fchest+film.png"),
        s3_record("inference-inputs", "old.png", name="s3:ObjectRemoved:Delete"),
    )
    notification = parse_notification(body)

    assert notification.skipped == 1
    [record] = notification.records
    assert (record.bucket, record.key, record.etag, record.size) == (
        "inference-inputs",
        "ward 3/chest film.png",
        "0123abcd",
        1234,
    )
    event = record.to_event()
    assert event["type"] == OBJECT_CREATED
    assert event["source"] == "minio:inference-inputs"
    assert event["bucket"] == "inference-inputs"
    assert event.get_data()["key"] == "ward 3/chest film.png"
    assert event.get_data()["event_time"] == "2026-11-26T10:00:00.123Z"


def test_sns_envelope_of_an_aws_s3_event_gives_the_same_event_as_the_minio_body():
    aws_record = s3_record("raw-data", "new+set.npz", etag='"0123abcd"', name="ObjectCreated:Put")
    via_sns = parse_notification(sns_body({"Records": [aws_record]})).records[0].to_event()
    via_minio = parse_notification(minio_body(s3_record("raw-data", "new+set.npz"))).records[0].to_event()
    assert via_sns["id"] == via_minio["id"]
    assert via_sns.get_data()["key"] == "new set.npz"


def test_sns_subscription_confirmation_and_s3_test_event_publish_nothing():
    confirmation = parse_notification(
        json.dumps(
            {
                "Type": "SubscriptionConfirmation",
                "TopicArn": "arn:aws:sns:us-east-1:1:t",
                "Token": "tok",
                "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
            }
        ).encode()
    )
    assert confirmation.records == []
    assert confirmation.confirmation is not None and confirmation.confirmation.token == "tok"
    assert forward_notification(confirmation, None)["status"] == "subscription_confirmation_received"

    test_event = parse_notification(sns_body({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}))
    assert test_event.records == [] and test_event.confirmation is None


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"Records": "x"}', "Records"),
        (
            json.dumps(
                {
                    "Records": [
                        {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"eTag": "e"}}}
                    ]
                }
            ).encode(),
            "Records[0].s3.object.key",
        ),
        (json.dumps({"Records": [s3_record("b", "k", etag="")]}).encode(), "eTag"),
        (json.dumps({"Type": "Notification", "Message": 5}).encode(), "Message"),
    ],
)
def test_malformed_notifications_are_400_naming_the_field(body, field):
    with pytest.raises(UserError, match=re.escape(field)) as excinfo:
        parse_notification(body)
    assert excinfo.value.status == 400


def test_webhook_auth_accepts_bearer_and_basic_password_and_rejects_the_rest():
    check_webhook_auth("Bearer s3cret", "s3cret")
    check_webhook_auth("Basic " + base64.b64encode(b"webhook:s3cret").decode(), "s3cret")
    with pytest.raises(Unauthorized):
        check_webhook_auth(None, "s3cret")
    with pytest.raises(Unauthorized):
        check_webhook_auth("Bearer wrong", "s3cret")
    with pytest.raises(Unauthorized):
        check_webhook_auth("Basic " + base64.b64encode(b"webhook:wrong").decode(), "s3cret")
    with pytest.raises(Forbidden):  # no token configured: refuse everyone rather than run open
        check_webhook_auth("Bearer anything", None)


def test_forward_publishes_every_record_and_fails_with_502_if_any_was_refused():
    seen: list[str] = []

    def sink(request: httpx.Request) -> httpx.Response:
        event = event_from_http(dict(request.headers), request.content)
        seen.append(event.get_data()["key"])
        return httpx.Response(500 if event.get_data()["key"] == "b.png" else 202)

    publisher = EventPublisher("http://broker.local/", transport=httpx.MockTransport(sink))
    ok = parse_notification(minio_body(s3_record("inference-inputs", "a.png")))
    assert forward_notification(ok, publisher) == {"status": "forwarded", "events": 1, "skipped": 0}

    partly = parse_notification(minio_body(*(s3_record("inference-inputs", k) for k in ("b.png", "c.png"))))
    with pytest.raises(EventDeliveryError) as excinfo:
        forward_notification(partly, publisher)
    assert excinfo.value.status == 502
    assert seen == ["a.png", "b.png", "c.png"]  # c.png was still tried after b.png failed


def test_forward_without_a_sink_refuses_rather_than_dropping_events():
    with pytest.raises(NotReady):
        forward_notification(parse_notification(minio_body(s3_record("inference-inputs", "a.png"))), None)


def test_unwrap_sns_gives_the_s3_event_of_either_body_and_none_for_handshakes():
    s3_event = json.loads(minio_body(s3_record("inference-inputs", "a.png")))
    assert unwrap_sns(s3_event) == s3_event
    assert unwrap_sns(json.loads(sns_body(s3_event))) == s3_event
    assert unwrap_sns({"Type": "SubscriptionConfirmation", "SubscribeURL": "http://x", "Token": "t"}) is None
    with pytest.raises(UserError):
        unwrap_sns({"Type": "Notification", "Message": 7})

"""Bucket notifications → `io.minio.object.created` CloudEvents.

Two bodies are accepted, told apart by their fields (normalized here, once, at the edge):
- MinIO's webhook: the plain S3 event JSON `{"EventName", "Key", "Records": [...]}`;
- an SNS HTTP delivery (AWS S3 → SNS → HTTP, and the local moto stack): `{"Type": "Notification",
  "Message": "<the S3 event JSON as a string>"}`, or `{"Type": "SubscriptionConfirmation", "SubscribeURL"}`.
  A confirmation yields `SubscriptionConfirmation`; the adapter acknowledges it and logs the topic, and the
  operator confirms the subscription (`aws sns confirm-subscription --token ...`) — the adapter never fetches a
  URL named in a request body, so it cannot be turned into a request forwarder.
Object keys arrive URL-encoded (`+` for a space) in both; they are decoded here.

Authentication: MinIO sends `Authorization: Bearer <token>` (its webhook `auth_token`); SNS cannot set headers
but sends HTTP Basic credentials written into the subscription URL (`http://webhook:<token>@host/`), so a
Basic password equal to the token is accepted too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from shared.errors import Forbidden, NotReady, Unauthorized, UserError
from shared.events import CloudEvent, EventDeliveryError, Publisher, object_created_event
from shared.security import check_bearer

__all__ = [
    "MAX_NOTIFICATION_BYTES",
    "BadNotification",
    "InvalidNotificationField",
    "Notification",
    "ObjectCreatedRecord",
    "SubscriptionConfirmation",
    "check_webhook_auth",
    "forward_notification",
    "parse_notification",
    "unwrap_sns",
]

log = logging.getLogger(__name__)

MAX_NOTIFICATION_BYTES = 1 << 20


class BadNotification(UserError):
    """A webhook body that is neither an S3 event nor an SNS envelope of one."""

    code = "bad_notification"


class InvalidNotificationField(BadNotification):
    """A notification field of the wrong JSON type (a key that is an object, a size that is a string): 422."""

    status = 422
    code = "invalid_field"


def _field(container: dict[str, Any], name: str, where: str, kind: type) -> Any:
    """`container[name]` when absent, null or of JSON type `kind`; a 422 naming the field otherwise."""
    value = container.get(name)
    if value is None or (isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)):
        return value
    expected = {dict: "an object", str: "a string", int: "a whole number", list: "an array"}[kind]
    raise InvalidNotificationField(f"{where}.{name} must be {expected}, got {type(value).__name__}")


@dataclass(frozen=True)
class ObjectCreatedRecord:
    """One created object version, as told by a notification record."""

    bucket: str
    key: str
    etag: str
    size: int | None
    event_time: str | None
    event_name: str

    def to_event(self) -> CloudEvent:
        return object_created_event(self.bucket, self.key, self.etag, self.size, self.event_time)


@dataclass(frozen=True)
class SubscriptionConfirmation:
    """An SNS subscription handshake: nothing to publish; the operator confirms with the token."""

    topic_arn: str
    subscribe_url: str
    token: str


@dataclass(frozen=True)
class Notification:
    """What one webhook call carried: created objects, other records skipped, or an SNS handshake."""

    records: list[ObjectCreatedRecord] = field(default_factory=list)
    skipped: int = 0
    confirmation: SubscriptionConfirmation | None = None


def check_webhook_auth(header_value: str | None, token: str | None) -> None:
    """Accept `Bearer <token>` or Basic with password `<token>`: 401 when missing or wrong, 403 when unconfigured."""
    if not token:
        # Refuse rather than run open: an unauthenticated adapter would let anyone trigger inference.
        raise Forbidden("authorization: the webhook token (WEBHOOK_TOKEN) is not configured; refusing all calls")
    scheme, _, credentials = (header_value or "").strip().partition(" ")
    if scheme.lower() != "basic":
        check_bearer(header_value, {"webhook": token})
        return
    try:
        password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[2]
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("authorization: malformed Basic credentials") from exc
    if not password or not hmac.compare_digest(password.encode("utf-8"), token.encode("utf-8")):
        raise Unauthorized("authorization: unknown token")


def unwrap_sns(document: dict[str, Any]) -> dict[str, Any] | None:
    """The S3 event JSON of a webhook body: the body itself (MinIO), the `Message` of an SNS Notification, or None
    for an SNS handshake (SubscriptionConfirmation, UnsubscribeConfirmation) that carries no event."""
    sns_type = document.get("Type")
    if sns_type in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return None
    if sns_type != "Notification":
        return document
    message = document.get("Message")
    if not isinstance(message, str):
        raise BadNotification("SNS notification has no 'Message' string")
    return _json_object(message, "SNS 'Message'")


def parse_notification(body: bytes | str) -> Notification:
    """Parse a MinIO webhook body or an SNS envelope of an S3 event into created-object records."""
    envelope = _json_object(body, "request body")
    document = unwrap_sns(envelope)
    if document is None:
        if envelope.get("Type") != "SubscriptionConfirmation":
            return Notification()
        return Notification(
            confirmation=SubscriptionConfirmation(
                topic_arn=str(envelope.get("TopicArn", "")),
                subscribe_url=str(envelope.get("SubscribeURL", "")),
                token=str(envelope.get("Token", "")),
            )
        )
    if document.get("Event") == "s3:TestEvent":
        return Notification()  # sent by S3 when a notification is configured; carries no object
    records = document.get("Records")
    if not isinstance(records, list):
        raise BadNotification("S3 event has no 'Records' list")
    created: list[ObjectCreatedRecord] = []
    skipped = 0
    for index, record in enumerate(records):
        parsed = _created_record(record, index)
        if parsed is None:
            skipped += 1
        else:
            created.append(parsed)
    return Notification(records=created, skipped=skipped)


def _json_object(text: bytes | str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadNotification(f"{what} is not valid JSON") from exc
    if not isinstance(document, dict):
        raise BadNotification(f"{what} must be a JSON object")
    return document


def _created_record(record: Any, index: int) -> ObjectCreatedRecord | None:
    """One `Records[i]`; None for events other than ObjectCreated (removals, accesses)."""
    where = f"Records[{index}]"
    if not isinstance(record, dict):
        raise BadNotification(f"{where} must be an object")
    event_name = _field(record, "eventName", where, str) or ""
    # MinIO names events `s3:ObjectCreated:Put`, AWS `ObjectCreated:Put`.
    if "ObjectCreated:" not in event_name:
        return None
    s3 = _field(record, "s3", where, dict)
    if not s3:
        raise BadNotification(f"{where}.s3 is missing")
    bucket = _field(_field(s3, "bucket", f"{where}.s3", dict) or {}, "name", f"{where}.s3.bucket", str)
    obj = _field(s3, "object", f"{where}.s3", dict) or {}
    key = _field(obj, "key", f"{where}.s3.object", str)
    if not bucket:
        raise BadNotification(f"{where}.s3.bucket.name is missing")
    if not key:
        raise BadNotification(f"{where}.s3.object.key is missing")
    etag = _field(obj, "eTag", f"{where}.s3.object", str) or _field(obj, "etag", f"{where}.s3.object", str)
    if not etag or not etag.strip('"'):
        raise BadNotification(f"{where}.s3.object.eTag is missing")
    size = _field(obj, "size", f"{where}.s3.object", int)
    if size is not None and size < 0:
        raise InvalidNotificationField(f"{where}.s3.object.size must be a non-negative integer")
    event_time = record.get("eventTime")
    return ObjectCreatedRecord(
        bucket=bucket,
        key=unquote_plus(key),
        etag=etag.strip('"'),
        size=size,
        event_time=event_time if isinstance(event_time, str) and event_time else None,
        event_name=event_name,
    )


def forward_notification(notification: Notification, publisher: Publisher | None) -> dict[str, Any]:
    """Publish one CloudEvent per created object; 502 unless the sink accepted every one (the sender retries).

    Every record is tried even after a failure, so a retry mostly re-sends events the broker already has —
    harmless, since their ids are deterministic.
    """
    if notification.confirmation is not None:
        log.warning(
            "SNS subscription confirmation for topic %s: confirm it with `aws sns confirm-subscription "
            "--topic-arn %s --token <Token of this request>`",
            notification.confirmation.topic_arn,
            notification.confirmation.topic_arn,
        )
        return {"status": "subscription_confirmation_received", "topic_arn": notification.confirmation.topic_arn}
    if publisher is None and notification.records:
        raise NotReady("K_SINK is not configured: events would be lost, so the notification is refused")
    failed = 0
    for record in notification.records:
        try:
            publisher.publish(record.to_event())  # type: ignore[union-attr]
        except EventDeliveryError as exc:
            failed += 1
            log.error("record of bucket %s not delivered: %s", record.bucket, exc.message)
    if failed:
        raise EventDeliveryError(
            f"the event sink accepted {len(notification.records) - failed} of "
            f"{len(notification.records)} events; resend the notification"
        )
    return {"status": "forwarded", "events": len(notification.records), "skipped": notification.skipped}

"""Webhooks' building blocks: the target guard, the Standard Webhooks signature, the back-off (the POST itself:
tests/worker/test_webhook_post.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.webhooks import (
    WEBHOOK_EVENTS,
    Target,
    WebhookRefused,
    backoff_seconds,
    check_target,
    parse_events,
    sign,
    valid_secret,
)
from tests.helpers import fake_resolver

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
LOCAL = frozenset({"127.0.0.1"})


def never_resolve(*args: object, **kwargs: object) -> list[tuple]:
    raise AssertionError("a malformed URL must be refused before any DNS lookup")


# --- events ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "events"), [
    (None, ("completed",)), ("", ("completed",)), ("completed,start", ("start", "completed")),
    (" Start ", ("start",)), ("start,start,", ("start",)), ("completed", ("completed",)),
])
def test_events_default_to_completed_and_keep_one_order(raw, events):
    assert parse_events(raw) == events
    assert set(events) <= set(WEBHOOK_EVENTS)


def test_an_unknown_event_is_refused_with_the_names_that_exist():
    with pytest.raises(WebhookRefused) as refused:
        parse_events("start,finished")
    assert refused.value.code == "bad_webhook_events"
    assert "finished" in refused.value.message and "completed" in refused.value.message


# --- the target guard -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/hook", "http://10.1.2.3/", "http://172.16.0.1/",
    "http://192.168.1.10/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://0.0.0.0/",
    "http://100.64.0.1/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/", "http://[fc00::1]/",
    "http://[fd12:3456::1]/", "http://[fe80::1]/", "http://[fec0::1]/", "http://224.0.0.1/", "http://240.0.0.1/",
    "https://198.18.0.1/", "http://2130706433/",
])
def test_non_public_addresses_are_refused(url):
    with pytest.raises(WebhookRefused) as refused:
        check_target(url, frozenset())
    assert refused.value.code == "webhook_not_allowed"
    assert "WEBHOOK_ALLOWED_HOSTS" in refused.value.message


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "http://user:pass@example.com/hook", "http://user@example.com/", "http:///hook",
    "example.com/hook", "javascript:alert(1)", "file:///etc/passwd", "http://example.com:99999/",
    "http://example.com:0/", "http://exa mple.com/", "http://example.com/\nX-Injected: 1", "http://" + "a" * 2050,
    "http://ex%41mple.com/", "http://a..b/",
])
def test_malformed_urls_are_refused_before_any_lookup(url):
    with pytest.raises(WebhookRefused) as refused:
        check_target(url, frozenset(), resolve=never_resolve)
    assert refused.value.code == "bad_webhook"


def test_a_name_that_resolves_to_the_metadata_address_is_refused_and_named():
    with pytest.raises(WebhookRefused) as refused:
        check_target("http://metadata.example/x", frozenset(),
                     resolve=fake_resolver({"metadata.example": ["169.254.169.254"]}))
    assert refused.value.code == "webhook_not_allowed"
    assert "metadata.example" in refused.value.message
    assert "169.254" not in refused.value.message  # a client learns nothing of internal DNS


def test_every_address_of_a_name_must_be_public():
    resolve = fake_resolver({"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(WebhookRefused):
        check_target("https://mixed.example/", frozenset(), resolve=resolve)


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "2002:a9fe:a9fe::1", "2001:db8::1",
                                     "ff02::1", "::"])
def test_ipv6_forms_of_internal_addresses_are_refused(address):
    with pytest.raises(WebhookRefused):
        check_target("http://v6.example/", frozenset(), resolve=fake_resolver({"v6.example": [address]}))


def test_a_public_name_is_accepted_after_one_lookup():
    calls: list[str] = []
    target = check_target("https://Hooks.Example:8443/a/b?x=1&y=%20#frag", frozenset(),
                          resolve=fake_resolver({"hooks.example": ["93.184.216.34", "2606:2800:220:1::1"]}, calls))
    assert calls == ["hooks.example"]
    assert target == Target(url="https://Hooks.Example:8443/a/b?x=1&y=%20#frag", scheme="https", host="hooks.example",
                            port=8443, path_and_query="/a/b?x=1&y=%20", address="93.184.216.34")
    assert target.host_header == "hooks.example:8443"


@pytest.mark.parametrize("address", ["2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::5db8:d822",
                                     "::ffff:93.184.216.34"])
def test_public_ipv6_addresses_are_accepted(address):
    target = check_target("http://v6.example", frozenset(), resolve=fake_resolver({"v6.example": [address]}))
    assert target.address == address and target.port == 80 and target.path_and_query == "/"
    assert target.host_header == "v6.example"


def test_international_names_are_looked_up_and_sent_in_ascii():
    calls: list[str] = []
    target = check_target("http://bücher.example/päth", frozenset(),
                          resolve=fake_resolver({"xn--bcher-kva.example": ["93.184.216.34"]}, calls))
    assert calls == ["xn--bcher-kva.example"]
    assert target.host == "xn--bcher-kva.example" and target.path_and_query == "/p%C3%A4th"


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://127.0.0.1:9000/hook", {"127.0.0.1"}), ("http://[::1]/hook", {"[0:0::1]"}),
    ("http://Internal.Example/hook", {"internal.example"}), ("http://internal.example./hook", {"INTERNAL.EXAMPLE"}),
])
def test_an_operator_may_allow_an_internal_host(url, allowed):
    resolve = fake_resolver({"127.0.0.1": ["127.0.0.1"], "::1": ["::1"], "internal.example": ["10.0.0.5"],
                             "internal.example.": ["10.0.0.5"]})
    assert check_target(url, frozenset(allowed), resolve=resolve).address in {"127.0.0.1", "::1", "10.0.0.5"}


def test_allowing_one_host_allows_no_other():
    resolve = fake_resolver({"other.example": ["10.0.0.5"]})
    with pytest.raises(WebhookRefused):
        check_target("http://other.example/", frozenset({"internal.example", "10.0.0.6"}), resolve=resolve)


def test_a_name_that_does_not_resolve_is_a_bad_webhook_worth_retrying():
    with pytest.raises(WebhookRefused) as refused:
        check_target("http://nowhere.example/", frozenset(), resolve=fake_resolver({}))
    assert refused.value.code == "bad_webhook" and refused.value.temporary
    assert "nowhere.example" in refused.value.message


# --- signatures -----------------------------------------------------------------------------------------------------

def test_a_signature_verifies_with_the_standard_webhooks_library():
    body = json.dumps({"task_id": "t1", "status": "SUCCESS", "prediction": 7})
    headers = sign(SECRET, "msg_t1_completed", dt.datetime.now(dt.UTC), body)

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,") and headers["webhook-timestamp"].isdigit()
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("7", "1"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)


def test_the_timestamp_is_the_instant_whatever_the_time_zone():
    instant = dt.datetime(2026, 5, 1, 12, 0, 30, tzinfo=dt.UTC)
    in_paris = instant.astimezone(dt.timezone(dt.timedelta(hours=2)))
    naive_utc = instant.replace(tzinfo=None)
    expected = sign(SECRET, "m", instant, "{}")
    assert expected["webhook-timestamp"] == str(int(instant.timestamp()))
    assert sign(SECRET, "m", in_paris, "{}") == expected == sign(SECRET, "m", naive_utc, "{}")


@pytest.mark.parametrize(("secret", "valid"), [
    (SECRET, True), (SECRET.rstrip("="), True), ("whsec_" + base64.b64encode(b"k" * 24).decode(), True),
    ("whsec_" + base64.b64encode(b"k" * 16).decode(), False), (SECRET[len("whsec_"):], False),
    ("whsec_!!!not-base64!!!", False), ("whsec_", False), ("", False),
])
def test_secrets_are_whsec_and_base64_of_24_bytes_or_more(secret, valid):
    assert valid_secret(secret) is valid


def test_signing_with_an_invalid_secret_is_refused():
    with pytest.raises(ValueError):
        sign("not-a-secret", "m", dt.datetime.now(dt.UTC), "{}")


# --- back-off -------------------------------------------------------------------------------------------------------

def test_backoff_grows_to_a_cap_with_a_little_jitter():
    bases = [min(5 * 4 ** (n - 1), 7200) for n in range(1, 13)]
    for n, base in enumerate(bases, start=1):
        for _ in range(20):
            assert 0.9 * base <= backoff_seconds(n) <= base
    assert bases[:7] == [5, 20, 80, 320, 1280, 5120, 7200]
    assert backoff_seconds(10_000) <= 7200
    assert 3 * 3600 < sum(backoff_seconds(n) for n in range(1, 8)) <= 4 * 3600  # 8 attempts span hours
    with pytest.raises(ValueError):
        backoff_seconds(0)


def test_a_shorter_base_shortens_every_wait_but_not_the_cap():
    assert 0.09 <= backoff_seconds(1, base_seconds=0.1) <= 0.1
    assert 1.44 <= backoff_seconds(3, base_seconds=0.1) <= 1.6
    assert 0.9 * 7200 <= backoff_seconds(12, base_seconds=60) <= 7200
    assert backoff_seconds(4, base_seconds=0) == 0

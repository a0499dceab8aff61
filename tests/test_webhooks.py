"""Budget webhooks can't be pointed inside the site's network (SSRF), can't be rebound by
DNS between the check and the call, never follow redirects, time out, and are signed so
the receiver can tell they came from this site (fluxgate_django/webhooks.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.server
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from fluxgate_django import webhooks
from fluxgate_django.webhooks import UnsafeWebhook, WebhookError

PUBLIC_V4 = "93.184.216.34"  # example.com


@contextmanager
def fluxgate(**options: Any) -> Iterator[None]:
    with override_settings(FLUXGATE={**settings.FLUXGATE, **options}):
        yield


def resolving(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Make ``socket.getaddrinfo`` answer ``answers[host]`` (a list of addresses, or a
    callable returning one); other hosts resolve as usual. Returns the hosts asked for."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        entry = answers[host]
        addresses = entry() if callable(entry) else entry
        infos = []
        for address in addresses:
            if ":" in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


# ----------------------------------------------------------------------------- refusals


def refusal_of(url: str) -> str:
    with pytest.raises(UnsafeWebhook) as info:
        webhooks.check_url(url)
    return str(info.value)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("[::1]", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("[::]", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.0.10", "private"),
        ("[fd12:3456::1]", "private"),  # unique local
        ("169.254.10.20", "link-local"),
        ("[fe80::1]", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("[ff02::1]", "multicast"),
        ("240.0.0.1", "reserved"),  # class E (also in Python's private list)
        ("255.255.255.255", "reserved"),  # limited broadcast
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("192.0.2.10", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("[2001:db8::1]", "private"),  # documentation
        ("[fec0::1]", "site-local"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("[fd00:ec2::254]", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("192.0.0.192", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        # IPv6 forms carrying an IPv4 address are judged by that address.
        ("[::ffff:127.0.0.1]", "IPv4-mapped form of 127.0.0.1, a loopback"),
        ("[::ffff:10.0.0.1]", "IPv4-mapped form of 10.0.0.1, a private"),
        ("[::ffff:169.254.169.254]", "IPv4-mapped form of 169.254.169.254, a cloud metadata"),
        ("[2002:7f00:1::1]", "6to4 form of 127.0.0.1, a loopback"),
        ("[2002:a9fe:a9fe::1]", "6to4 form of 169.254.169.254, a cloud metadata"),
        ("[2002:c0a8:101::1]", "6to4 form of 192.168.1.1, a private"),
        ("[64:ff9b::7f00:1]", "NAT64 form of 127.0.0.1, a loopback"),
        ("[64:ff9b::a00:1]", "NAT64 form of 10.0.0.1, a private"),
        ("[64:ff9b:1::a00:1]", "local-use NAT64"),
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "Teredo"),
        ("[::7f00:1]", "IPv4-compatible"),
    ],
)
def test_non_public_addresses_are_refused(host, reason):
    message = refusal_of(f"https://{host}/hook")
    assert reason in message
    assert "webhooks may only call public addresses" in message


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        PUBLIC_V4,
        "[2606:4700:4700::1111]",
        "[::ffff:8.8.8.8]",  # mapped, public inside
        "[64:ff9b::808:808]",  # NAT64 (DNS64 on an IPv6-only host) of a public address
        "[2002:808:808::1]",  # 6to4 of a public address
    ],
)
def test_public_addresses_are_accepted(host):
    assert webhooks.check_url(f"https://{host}/hook?token=abc") is None
    assert webhooks.vet(f"https://{host}:8443/x").port == 8443


@pytest.mark.parametrize("host", ["localhost", "localhost.", "LOCALHOST"])
def test_a_host_name_resolving_to_loopback_is_refused(host):
    assert "loopback" in refusal_of(f"https://{host}/hook")


def test_one_private_address_among_a_hosts_addresses_is_enough_to_refuse(monkeypatch):
    resolving(monkeypatch, {"mixed.example": [PUBLIC_V4, "2606:4700::1", "10.0.0.7"]})
    assert "mixed.example (10.0.0.7) is a private address" in refusal_of("https://mixed.example/")
    resolving(monkeypatch, {"v6.example": [PUBLIC_V4, "::1"]})
    assert "loopback" in refusal_of("https://v6.example/")


def test_a_host_that_does_not_resolve_is_refused(monkeypatch):
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    assert "does not resolve" in refusal_of("https://nowhere.invalid/hook")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://8.8.8.8/hook", "must use https"),
        ("file:///etc/passwd", "must use https"),
        ("gopher://8.8.8.8:70/", "must use https"),
        ("javascript:alert(1)", "must use https"),
        ("http://8.8.8.8/hook", "http is turned off"),
        ("https:///hook", "no host"),
        ("https://user:pw@8.8.8.8/", "user name or password"),
        ("https://8.8.8.8@127.0.0.1/", "user name or password"),
        ("https://8.8.8.8:99999/", "Not a valid URL"),
        ("", "Enter a webhook URL"),
    ],
)
def test_malformed_or_non_https_urls_are_refused(url, reason):
    assert reason in refusal_of(url)


def test_http_is_allowed_only_by_the_setting():
    with fluxgate(WEBHOOK_ALLOW_HTTP=True):
        assert webhooks.check_url("http://8.8.8.8/hook") is None
        assert "loopback" in refusal_of("http://127.0.0.1/hook")  # still public only
        assert "must use https" in refusal_of("ftp://8.8.8.8/hook")


def test_the_refusal_is_a_value_error_with_a_field_message():
    with pytest.raises(ValueError, match=r"^The webhook host 127\.0\.0\.1 is a loopback"):
        webhooks.check_url("https://127.0.0.1/")


def test_the_allow_list_admits_named_hosts_addresses_and_networks(monkeypatch):
    resolving(
        monkeypatch,
        {
            "hooks.internal": ["10.0.0.5"],
            "a.corp.internal": ["10.9.0.1"],
            "corp.internal.evil.example": ["10.9.0.2"],
            "other.internal": ["192.168.7.7"],
        },
    )
    allowed = ["hooks.internal", ".corp.internal", "172.20.0.0/16", "127.0.0.1", "fd00:1::/64"]
    with fluxgate(WEBHOOK_ALLOWED_HOSTS=allowed):
        webhooks.check_url("https://hooks.internal/hook")
        webhooks.check_url("https://HOOKS.internal./hook")
        webhooks.check_url("https://a.corp.internal/hook")
        webhooks.check_url("https://172.20.3.4/hook")
        webhooks.check_url("https://127.0.0.1:8000/hook")
        webhooks.check_url("https://[fd00:1::5]/hook")
        assert "private" in refusal_of("https://corp.internal.evil.example/")  # not a suffix
        assert "private" in refusal_of("https://other.internal/")
        assert "private" in refusal_of("https://172.21.0.1/")  # outside the network
        assert "loopback" in refusal_of("https://127.0.0.2/")
        assert "must use https" in refusal_of("http://hooks.internal/")  # scheme still applies
    assert "private" in refusal_of("https://hooks.internal/")  # not allowed by default


# ----------------------------------------------------------------------------- a receiver


class Receiver:
    """A local HTTP server recording what it is sent and answering ``status``."""

    def __init__(self, status: int = 200, location: str | None = None, delay: float = 0):
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                receiver.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                time.sleep(delay)
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_delivery_is_pinned_to_the_checked_address_with_the_urls_host_header(monkeypatch):
    with Receiver() as receiver:
        asked = resolving(monkeypatch, {"hooks.internal": ["127.0.0.1"]})
        with fluxgate(WEBHOOK_ALLOW_HTTP=True, WEBHOOK_ALLOWED_HOSTS=["hooks.internal"]):
            url = f"http://hooks.internal:{receiver.port}/alerts/in?token=t0k"
            status = webhooks.post(url, {"type": "budget_threshold_crossed"}, secret="s3cret")
    assert status == 200
    assert asked == ["hooks.internal"]  # resolved once, at the check
    [request] = receiver.requests
    assert request["path"] == "/alerts/in?token=t0k"
    assert request["headers"]["Host"] == f"hooks.internal:{receiver.port}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {"type": "budget_threshold_crossed"}
    header = request["headers"]["X-FluxGate-Signature"]
    assert webhooks.verify(request["body"], header, "s3cret")
    assert not webhooks.verify(request["body"], header, "another secret")


def test_dns_rebinding_between_saving_and_sending_is_refused_before_connecting(monkeypatch):
    """The host resolved to a public address when the budget was saved, and to loopback
    when the alert is sent: the send-time check refuses it; nothing reaches loopback."""
    with Receiver() as receiver:
        answers = iter([[PUBLIC_V4], ["127.0.0.1"]])
        resolving(monkeypatch, {"rebind.example": lambda: next(answers)})
        with fluxgate(WEBHOOK_ALLOW_HTTP=True):
            url = f"http://rebind.example:{receiver.port}/hook"
            webhooks.check_url(url)  # saved: public then
            with pytest.raises(UnsafeWebhook, match="loopback"):
                webhooks.post(url, {"n": 1}, secret="s")
    assert receiver.connections == 0
    assert receiver.requests == []


def test_dns_rebinding_after_the_send_time_check_cannot_redirect_the_connection(monkeypatch):
    """Public at the send-time check, loopback for any later lookup: the connection goes
    to the public address that was checked (no second lookup), never to the listener."""
    with Receiver() as receiver:
        answers: list[list[str]] = []
        asked = resolving(
            monkeypatch, {"rebind.example": lambda: answers.pop() if answers else ["127.0.0.1"]}
        )
        connected: list[tuple[str, int]] = []

        def refuse(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
            connected.append(address)
            raise ConnectionRefusedError("not in this test")

        monkeypatch.setattr(socket, "create_connection", refuse)
        with fluxgate(WEBHOOK_ALLOW_HTTP=True):
            for scheme in ("http", "https"):
                answers.append([PUBLIC_V4])  # public once more, for this send's check
                with pytest.raises(WebhookError, match="Could not connect"):
                    webhooks.post(f"{scheme}://rebind.example:{receiver.port}/h", {}, secret="s")
    assert asked == ["rebind.example", "rebind.example"]  # one lookup per send: the check's
    assert connected == [(PUBLIC_V4, receiver.port), (PUBLIC_V4, receiver.port)]
    assert receiver.connections == 0


def test_redirects_are_not_followed(monkeypatch):
    allowed = fluxgate(WEBHOOK_ALLOW_HTTP=True, WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
    with Receiver() as target, allowed:
        location = f"http://127.0.0.1:{target.port}/target"
        with (
            Receiver(status=302, location=location) as hook,
            pytest.raises(WebhookError, match=r"redirect \(302\); not followed"),
        ):
            webhooks.post(f"http://127.0.0.1:{hook.port}/hook", {"n": 1}, secret="s")
        for status in (301, 303, 307, 308):
            with (
                Receiver(status=status, location=location) as other,
                pytest.raises(WebhookError, match=f"redirect \\({status}\\)"),
            ):
                webhooks.post(f"http://127.0.0.1:{other.port}/", {}, secret="s")
            assert len(other.requests) == 1
    assert [r["path"] for r in hook.requests] == ["/hook"]
    assert target.connections == 0


def test_an_error_answer_is_a_failed_delivery(monkeypatch):
    allowed = fluxgate(WEBHOOK_ALLOW_HTTP=True, WEBHOOK_ALLOWED_HOSTS=["127.0.0.0/8"])
    with (
        Receiver(status=500) as hook,
        allowed,
        pytest.raises(WebhookError, match="answered 500"),
    ):
        webhooks.post(f"http://127.0.0.1:{hook.port}/hook", {}, secret="s")
    assert len(hook.requests) == 1


def test_a_receiver_that_does_not_answer_times_out_after_the_setting():
    with Receiver(delay=3) as hook:
        options = {"WEBHOOK_ALLOW_HTTP": True, "WEBHOOK_ALLOWED_HOSTS": ["127.0.0.1"]}
        with fluxgate(**options, ALERT_WEBHOOK_TIMEOUT=0.3):
            started = time.monotonic()
            with pytest.raises(WebhookError, match="timed out"):
                webhooks.post(f"http://127.0.0.1:{hook.port}/slow", {}, secret="s")
            assert time.monotonic() - started < 2


def test_a_refused_url_is_refused_by_post_too():
    with pytest.raises(UnsafeWebhook, match="cloud metadata"):
        webhooks.post("https://169.254.169.254/latest/meta-data/", {}, secret="s")
    with pytest.raises(UnsafeWebhook, match="must use https"):
        webhooks.post("ftp://8.8.8.8/", {}, secret="s")


# ----------------------------------------------------------------------------- HTTPS


def _certificates(tmp_path: Path, hostname: str) -> tuple[str, str, str]:
    """A CA and a certificate it signed for ``hostname``: (ca file, cert file, key file)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def build(subject: str, issuer: Any, key: Any, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FluxGate test CA")])
    ca = build("FluxGate test CA", ca_name, ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(hostname, ca_name, key, ca_key, False)
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca.public_bytes(pem),
        "cert.pem": cert.public_bytes(pem),
        "key.pem": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")


@contextmanager
def tls_receiver(cert: str, key: str) -> Iterator[tuple[Receiver, list[str | None]]]:
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    receiver = Receiver()
    plain = receiver.server.socket
    receiver.server.socket = context.wrap_socket(plain, server_side=True)
    with receiver:
        yield receiver, names


def test_https_connects_to_the_checked_address_with_sni_and_verifies_the_hostname(
    tmp_path, monkeypatch
):
    ca, cert, key = _certificates(tmp_path, "hooks.internal")
    client_context = ssl.create_default_context(cafile=ca)
    with tls_receiver(cert, key) as (receiver, names):
        resolving(monkeypatch, {"hooks.internal": ["127.0.0.1"], "wrong.internal": ["127.0.0.1"]})
        with fluxgate(WEBHOOK_ALLOWED_HOSTS=["hooks.internal", "wrong.internal"]):
            status = webhooks.post(
                f"https://hooks.internal:{receiver.port}/in",
                {"ok": True},
                secret="s",
                ssl_context=client_context,
            )
            assert status == 200
            # The same server under a name its certificate doesn't carry: refused.
            with pytest.raises(WebhookError, match="TLS error"):
                webhooks.post(
                    f"https://wrong.internal:{receiver.port}/in",
                    {},
                    secret="s",
                    ssl_context=client_context,
                )
            # Not trusted by the system's CAs (the default context): refused.
            with pytest.raises(WebhookError, match="TLS error"):
                webhooks.post(f"https://hooks.internal:{receiver.port}/in", {}, secret="s")
    assert names[0] == "hooks.internal"
    assert "wrong.internal" in names
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"hooks.internal:{receiver.port}"
    assert json.loads(request["body"]) == {"ok": True}


# ----------------------------------------------------------------------------- signatures


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = webhooks.body_of({"b": 2, "a": "é"})
    header = webhooks.sign(body, "k3y", timestamp=1_700_000_000)
    match = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header)
    assert match is not None
    t, digest = match.groups()
    # What a receiver in any language computes (the README's recipe):
    expected = hmac.new(b"k3y", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert digest == expected
    assert t == "1700000000"


def test_verify_accepts_only_an_intact_recent_body_signed_with_the_secret():
    body = webhooks.body_of({"spent_usd": "80.00"})
    now = 1_700_000_000
    header = webhooks.sign(body, "k3y", timestamp=now)
    assert webhooks.verify(body, header, "k3y", now=now + 10)
    assert webhooks.verify(body.decode(), header, "k3y", now=now)  # str body
    assert not webhooks.verify(body, header, "wrong", now=now)
    assert not webhooks.verify(body.replace(b"80", b"10"), header, "k3y", now=now)
    assert not webhooks.verify(body, header, "k3y", now=now + 301)  # a replay, later
    assert not webhooks.verify(body, header, "k3y", now=now - 301)
    assert webhooks.verify(body, header, "k3y", now=now + 3000, tolerance=3600)
    assert not webhooks.verify(body, header.replace(f"t={now}", f"t={now + 1}"), "k3y", now=now)
    assert not webhooks.verify(body, None, "k3y")
    assert not webhooks.verify(body, "", "k3y")
    assert not webhooks.verify(body, "v1=abc", "k3y")
    assert not webhooks.verify(body, f"t={now}", "k3y", now=now)
    assert not webhooks.verify(body, header, "", now=now)
    # While a secret is rotated, a header with two signatures verifies with either.
    old = webhooks.sign(body, "old", timestamp=now)
    rotated = f"{header},v1={old.split('v1=')[1]}"
    assert webhooks.verify(body, rotated, "old", now=now)
    assert webhooks.verify(body, rotated, "k3y", now=now)


def test_the_site_secret_is_the_setting_or_derived_from_secret_key():
    with fluxgate(WEBHOOK_SECRET="configured-secret"):
        assert webhooks.site_secret() == "configured-secret"
    derived = webhooks.site_secret()
    assert len(derived) == 64 and derived != settings.SECRET_KEY
    assert settings.SECRET_KEY not in derived
    assert webhooks.site_secret() == derived  # stable
    with override_settings(SECRET_KEY="another-site-secret-key"):
        assert webhooks.site_secret() != derived


def test_post_signs_with_the_secret_it_is_given(monkeypatch):
    allowed = fluxgate(WEBHOOK_ALLOW_HTTP=True, WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"])
    with Receiver() as receiver, allowed:
        secret = webhooks.site_secret()
        webhooks.post(f"http://127.0.0.1:{receiver.port}/", {"x": 1}, secret=secret)
    [request] = receiver.requests
    header = request["headers"]["X-FluxGate-Signature"]
    assert webhooks.verify(request["body"], header, secret)
    t = int(header.split(",")[0].removeprefix("t="))
    assert abs(time.time() - t) < 60

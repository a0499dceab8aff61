"""Outgoing webhooks that cannot be pointed inside the site's network, signed for receivers.

A budget's ``webhook_url`` is set by a team admin, so the server must not POST wherever it
says (server-side request forgery). :func:`check_url` refuses a URL unless

* its scheme is ``https`` (``http`` only with ``FLUXGATE["WEBHOOK_ALLOW_HTTP"]``), it has
  a host and no credentials, and
* every address its host resolves to (``socket.getaddrinfo``: all of them, IPv4 and IPv6)
  is a public, globally routable unicast address: not loopback, private, link-local,
  site-local, multicast, reserved, unspecified, shared CGNAT space (100.64.0.0/10),
  documentation or benchmarking ranges, nor a cloud metadata address. IPv6 forms that
  carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64
  ``64:ff9b::/96``) are judged by the IPv4 address they carry; Teredo, IPv4-compatible
  and local-use NAT64 (``64:ff9b:1::/48``) addresses are refused,

unless the host is in ``FLUXGATE["WEBHOOK_ALLOWED_HOSTS"]`` (hostnames, IP addresses or
CIDR networks: deliberate internal hooks).

:func:`post` checks again when it sends (the host may resolve elsewhere since it was
saved) and connects to exactly the address it checked: there is no second DNS lookup for
a rebinding DNS server to answer differently. HTTPS still sends the URL's hostname as SNI
and verifies the certificate against it; the ``Host`` header is the URL's. Redirects are
never followed (a 3xx is a failed delivery) and every socket operation times out after
``ALERT_WEBHOOK_TIMEOUT`` seconds.

Each body is signed: ``X-FluxGate-Signature: t=<unix time>,v1=<hex>`` where ``v1`` is
HMAC-SHA256 over ``f"{t}.{body}"`` keyed by the site's webhook secret
(:func:`site_secret`). Receivers check it with :func:`verify` (or the same few lines: see
the README), which also refuses a timestamp too far from now (replays).

Depends only on the settings module and the standard library (no models).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from .conf import fluxgate_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SIGNATURE_HEADER = "X-FluxGate-Signature"
#: How far a signature's timestamp may be from the receiver's clock (seconds).
DEFAULT_TOLERANCE = 300
USER_AGENT = "fluxgate-django"

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
#: Instance metadata and host services of the big clouds. Most are link-local or
#: private anyway; these are the ones that are not (or are worth naming).
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, DigitalOcean, OpenStack...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "168.63.129.16",  # Azure WireServer (a public address)
    )
)


class UnsafeWebhook(ValueError):
    """The webhook URL may not be called; the message says why (fit for a form error)."""


class WebhookError(Exception):
    """The webhook was called but the delivery failed (no 2xx answer, a redirect, a
    connection or TLS error)."""


@dataclass(frozen=True)
class Target:
    """A vetted URL: where to connect (``addresses``, all checked) and what to send."""

    scheme: str
    host: str  # the URL's host (IDNA-encoded), sent as Host and SNI
    port: int
    path: str  # path and query
    addresses: tuple[str, ...]


# --------------------------------------------------------------------------- checking


def check_url(url: str) -> None:
    """Raise :class:`UnsafeWebhook` unless ``url`` is a webhook FluxGate may call."""
    vet(url)


def vet(url: str) -> Target:
    """Check ``url`` (see the module) and resolve it: the addresses it may connect to."""
    if not isinstance(url, str) or not url.strip():
        raise UnsafeWebhook("Enter a webhook URL.")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhook(f"Not a valid URL ({exc}).") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if fluxgate_settings.WEBHOOK_ALLOW_HTTP else ("https",)
    if scheme not in allowed:
        raise UnsafeWebhook(
            "Webhook URLs must use https."
            if scheme != "http"
            else "Webhook URLs must use https (http is turned off on this site)."
        )
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhook("Webhook URLs may not contain a user name or password.")
    raw_host = parts.hostname
    if not raw_host:
        raise UnsafeWebhook("The webhook URL has no host.")
    host = _idna(raw_host)
    port = port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if any(c in path for c in "\r\n\x00 "):
        raise UnsafeWebhook("The webhook URL's path contains spaces or control characters.")
    addresses = _resolve(host, port)
    host_allowed = _host_allow_listed(host)
    networks = _allowed_networks()
    for address in addresses:
        if host_allowed or any(address in net for net in networks):
            continue
        reason = refusal(address)
        if reason is not None:
            shown = host if host == str(address) else f"{host} ({address})"
            raise UnsafeWebhook(
                f"The webhook host {shown} is {reason}: webhooks may only call public "
                "addresses (allow internal hosts with FLUXGATE['WEBHOOK_ALLOWED_HOSTS'])."
            )
    return Target(scheme, host, port, path, tuple(str(a) for a in addresses))


def refusal(address: IPAddress) -> str | None:
    """Why a webhook may not connect to ``address`` (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _embedded(address.ipv4_mapped, "an IPv4-mapped")
        if address in _NAT64:
            return _embedded(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "a NAT64")
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if address.sixtofour is not None:
            return _embedded(address.sixtofour, "a 6to4")
        if address.teredo is not None:
            return "a Teredo tunnel address"
        if address in _IPV4_COMPATIBLE and not address.is_unspecified and not address.is_loopback:
            return "an IPv4-compatible (deprecated) address"
        if address.is_site_local:
            return "a site-local address"
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _CGNAT:
        return "in the shared (CGNAT) address space"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _embedded(v4: ipaddress.IPv4Address, form: str) -> str | None:
    reason = refusal(v4)
    return None if reason is None else f"{form} form of {v4}, {reason}"


def _idna(host: str) -> str:
    if host.endswith("."):
        host = host[:-1]  # the root label: "localhost." is localhost
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return host
    except ValueError:
        pass
    try:
        encoded = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeWebhook("The webhook URL's host is not a valid host name.") from None
    if not encoded or any(not label for label in encoded.split(".")):
        raise UnsafeWebhook("The webhook URL's host is not a valid host name.")
    return encoded


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeWebhook(f"The webhook host {host} does not resolve.") from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeWebhook(f"The webhook host {host} does not resolve.")
    return addresses


def _allowed_entries() -> list[str]:
    entries = fluxgate_settings.WEBHOOK_ALLOWED_HOSTS or ()
    if isinstance(entries, str):
        entries = [entries]
    return [str(e).strip().lower().rstrip(".") for e in entries if str(e).strip()]


def _allowed_networks() -> list[IPNetwork]:
    networks: list[IPNetwork] = []
    for entry in _allowed_entries():
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            continue  # a host name
    return networks


def _host_allow_listed(host: str) -> bool:
    """``host`` is named in the allow-list (exactly, or under a ``.example.com`` entry)."""
    for entry in _allowed_entries():
        if entry == host or (entry.startswith(".") and host.endswith(entry)):
            return True
    return False


# --------------------------------------------------------------------------- signing


def site_secret() -> str:
    """The key webhooks are signed with: ``FLUXGATE["WEBHOOK_SECRET"]``, else one derived
    from ``SECRET_KEY`` (stable while it is; never SECRET_KEY itself)."""
    configured = fluxgate_settings.WEBHOOK_SECRET
    if configured:
        return str(configured)
    from django.conf import settings

    return hmac.new(
        str(settings.SECRET_KEY).encode(), b"fluxgate.webhooks.signing.v1", hashlib.sha256
    ).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The signature header's value for ``body``: ``t=<unix time>,v1=<hex HMAC-SHA256>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(body, secret, t)}"


def _digest(body: bytes, secret: str, t: int) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def verify(
    body: bytes | str,
    header: str | None,
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Receiver side: True if ``header`` (the ``X-FluxGate-Signature`` value) signs
    ``body`` (the raw request body, exactly as received) with ``secret`` and its timestamp
    is within ``tolerance`` seconds of ``now``. Several ``v1=`` entries may be given (a
    secret being rotated): one matching is enough."""
    if not header or not secret:
        return False
    raw = body.encode() if isinstance(body, str) else bytes(body)
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _digest(raw, secret, timestamp)
    return any(hmac.compare_digest(expected, c.lower()) for c in candidates)


# --------------------------------------------------------------------------- sending


class PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to ``host`` that opens its socket to ``address`` (already
    vetted) instead of resolving ``host`` again."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``host`` over a socket opened to ``address``: SNI and certificate
    verification are for ``host`` (the URL's), not for the address."""

    def __init__(
        self, host: str, port: int, *, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address
        self.tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def body_of(payload: Any) -> bytes:
    """The JSON body sent for ``payload`` (what the signature covers)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def post(
    url: str,
    payload: Any,
    *,
    secret: str,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """POST ``payload`` as signed JSON to ``url``; its (2xx) status.

    Raises :class:`UnsafeWebhook` if the URL is not allowed now (checked again here) and
    :class:`WebhookError` if the delivery fails: a connection or TLS error, a timeout, a
    redirect (never followed) or any other non-2xx answer. ``ssl_context`` defaults to the
    system's trusted CAs with hostname verification.
    """
    target = vet(url)
    timeout = float(fluxgate_settings.ALERT_WEBHOOK_TIMEOUT)
    body = body_of(payload)
    sent_headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(body, secret),
    }
    context = ssl_context or ssl.create_default_context()
    last_error: Exception | None = None
    for address in target.addresses:  # every one was vetted; the first that answers
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            connection = PinnedHTTPSConnection(
                target.host, target.port, address=address, timeout=timeout, context=context
            )
        else:
            connection = PinnedHTTPConnection(
                target.host, target.port, address=address, timeout=timeout
            )
        try:
            try:
                connection.connect()
            except (OSError, ssl.SSLError) as exc:
                if isinstance(exc, ssl.SSLError):
                    raise WebhookError(f"TLS error calling the webhook: {exc}") from None
                last_error = exc
                continue  # try the host's next (vetted) address
            try:
                connection.request("POST", target.path, body=body, headers=sent_headers)
                response = connection.getresponse()
                status = response.status
                response.read(64 * 1024)  # drain a little; a reply's body is not used
            except (OSError, http.client.HTTPException) as exc:
                raise WebhookError(f"The webhook call failed: {exc}") from None
        finally:
            connection.close()
        if 300 <= status < 400:
            raise WebhookError(f"The webhook answered a redirect ({status}); not followed.")
        if not 200 <= status < 300:
            raise WebhookError(f"The webhook answered {status}.")
        return status
    raise WebhookError(f"Could not connect to the webhook host {target.host}: {last_error}")

"""The site's private directory for the spool and the journal, and their authenticated lines.

The directory is the site's own: ``FLUXGATE["SPOOL_DIR"]``, or by default
``<BASE_DIR>/var/fluxgate`` when the project directory is writable, else
``<temp dir>/fluxgate-<key>`` where the key is derived from ``SECRET_KEY`` and the settings
module (two sites on one host never share it, and another user can't guess its name).
FluxGate creates it ``0700`` and its files ``0600``; system check ``fluxgate.E009``
refuses a directory that another user owns or can write.

Every line carries a MAC: keyed BLAKE2b (128 bits; a MAC by design, and a third of
HMAC-SHA256's cost on the caller's path, where the journal seals each line) of the line
before it, keyed by a key derived from ``SECRET_KEY`` with :func:`~django.utils.crypto.salted_hmac`
(``SECRET_KEY_FALLBACKS`` are accepted on reading, so rotating the key loses nothing). A
line planted by another user, or written by another site, fails the check and is never
stored. (The formats: see "lines" below.)
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import operator
import os
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable
from hashlib import blake2b
from pathlib import Path
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import fluxgate_settings, on_reload
from ..records import EVENT_RECORD_FIELDS, EventRecord

logger = logging.getLogger("fluxgate.spool")

#: File and directory modes: the site's user only.
FILE_MODE = 0o600
DIR_MODE = 0o700

_KEY_SALT = "fluxgate_django.recording.private"

_dir_lock = threading.Lock()
_site_dir: Path | None = None
#: (SECRET_KEY, SECRET_KEY_FALLBACKS) -> [derived keys: the current key's, then the fallbacks']
_macs: dict[Any, list[bytes]] = {}


class ForgedLine(ValueError):
    """A line without a valid MAC: planted, written by another site, or damaged."""


# -- the directory -------------------------------------------------------------------------


def site_dir() -> Path:
    """The site's private directory (created ``0700`` if missing)."""
    global _site_dir
    path = _site_dir
    if path is None:
        with _dir_lock:
            path = configured_dir()
            make_private_dir(path)
            problem = unsafe_dir(path)
            if problem:
                # (System check fluxgate.E009 refuses it at deploy; at run time the MAC
                # still keeps planted lines out of the database.)
                logger.error("FluxGate's spool directory %s %s", path, problem)
            _site_dir = path
        return path
    make_private_dir(path)
    return path


def configured_dir() -> Path:
    """``SPOOL_DIR``, or the site's default directory (not created)."""
    configured = fluxgate_settings.SPOOL_DIR
    if configured:
        return Path(configured)
    return default_dir()


def default_dir() -> Path:
    """``<BASE_DIR>/var/fluxgate`` if the project directory is writable, else a directory
    in the system temp directory named by a key derived from ``SECRET_KEY``."""
    from django.conf import settings

    base = getattr(settings, "BASE_DIR", None)
    if base:
        var = Path(base) / "var"
        parent = var if var.is_dir() else Path(base)
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return var / "fluxgate"
    return Path(tempfile.gettempdir()) / f"fluxgate-{_site_key()}"


def _site_key() -> str:
    from django.conf import settings
    from django.utils.crypto import salted_hmac

    module = os.environ.get("DJANGO_SETTINGS_MODULE", "") or getattr(
        settings, "SETTINGS_MODULE", ""
    )
    return salted_hmac(f"{_KEY_SALT}.dir", module, algorithm="sha256").hexdigest()[:20]


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing; the directories created are ``0700``."""
    if path.is_dir():
        return
    missing = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)  # (mkdir's mode is cut by the umask)


def unsafe_dir(path: Path) -> str | None:
    """Why ``path`` is not private to this site's user (``None``: it is, or is missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return f"is owned by another user (uid {st.st_uid}, this process runs as {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """``os.open`` of a file created ``0600`` (never inherited by a child process)."""
    return os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)


# -- lines ---------------------------------------------------------------------------------
#
# A spool line is a record's ``to_json(compact=True)`` object with a ``"mac"`` member added
# last. A journal line (written on the caller's thread, so the cheapest to make) is the
# record's field values as a JSON array, the MAC added as its last element, after a
# header line per journal file naming the fields (so a file written by another version
# of FluxGate reads by name). Each line's MAC covers the line as it was before the MAC
# was added: ``{...}`` or ``[...]``.
#
# Journal rows, version 2 (the header's ``"journal": 2``): the fields in ``ROW_FIELDS``
# order; the tracking id is its text (orjson's row) or its 128-bit integer (the standard
# library's: text to format costs the caller's path most), ``created_at`` its ISO text, or
# for a UTC time in the standard library's row, the microseconds since 1970-01-01
# (exact). Version 1 rows (``EventRecord``'s field order, the id and the time as text)
# read as before.


class LineReader:
    """Decodes the lines of one file in order (a journal file's header comes first)."""

    def __init__(self) -> None:
        self.fields: tuple[str, ...] | None = None
        #: The header line read (to write it again before rows given back to the spool).
        self.header: bytes | None = None

    def read(self, line: bytes) -> EventRecord | None:
        """The record of ``line`` (None for a header). Raises :class:`ForgedLine` if its
        MAC is missing or wrong, ``ValueError`` (and friends) if it is not a record."""
        data = json.loads(verified(line))
        if isinstance(data, dict):
            if data.get("journal") in JOURNAL_VERSIONS and isinstance(data.get("fields"), list):
                self.fields = tuple(data["fields"])
                self.header = line.rstrip(b"\r\n")
                return None
            return EventRecord.from_json(data)
        if isinstance(data, list):
            if self.fields is None:
                raise ValueError("a journal row without its header")
            values = dict(zip(self.fields, data, strict=True))
            # (Version 2: the id as its integer, a UTC time as microseconds since 1970.)
            tracking_id = values.get("tracking_id")
            if tracking_id.__class__ is int:
                values["tracking_id"] = str(uuid.UUID(int=tracking_id))
            created_at = values.get("created_at")
            if created_at.__class__ is int:
                values["created_at"] = (_EPOCH + created_at * _MICROSECOND).isoformat()
            return EventRecord.from_json(values)
        raise ValueError("not a record")


def encode(record: EventRecord) -> str:
    """A spool line (newline included) for ``record``, with its MAC."""
    body = json.dumps(record.to_json(compact=True), separators=(",", ":")).encode()
    return _sealed(body).decode()


def decode(line: str | bytes) -> EventRecord:
    """The record of one spool line (see :class:`LineReader` for journal files)."""
    record = LineReader().read(line if isinstance(line, bytes) else line.encode())
    if record is None:
        raise ValueError("a journal header, not a record")
    return record


#: The journal row formats this version reads (see "lines" above); it writes the last.
JOURNAL_VERSIONS = (1, 2)


def header_line() -> bytes:
    """The first line of a journal file: its row format and the names of its rows' fields."""
    body = json.dumps(
        {"journal": JOURNAL_VERSIONS[-1], "fields": list(ROW_FIELDS)},
        separators=(",", ":"),
    )
    return _sealed(body.encode())


try:  # the C encoder, built once (``JSONEncoder.encode`` builds one per call)
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring_ascii as _ascii

    # (No circular check: the record builder makes every value plain JSON; a cycle
    # would fail the journal's append, logged, and the record still goes to the recorder.)
    _ROW_ENCODER: Any = (
        _c_make_encoder(None, str, _ascii, None, ":", ",", False, False, True)
        if _c_make_encoder is not None
        else None
    )
except ImportError:  # pragma: no cover - a Python without the C accelerator
    _ROW_ENCODER = None
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


#: A version 2 row's fields: these five first (made JSON on the caller's path), then the
#: others as they are, in ``EventRecord``'s order.
_CONVERTED = ("tracking_id", "created_at", "cost_usd", "cost_saved_usd", "team")
ROW_FIELDS = (*_CONVERTED, *(f for f in EVENT_RECORD_FIELDS if f not in _CONVERTED))
_plain_values = operator.attrgetter(*ROW_FIELDS[len(_CONVERTED) :])
_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_UUID = uuid.UUID


def encode_row(record: EventRecord) -> bytes:
    """A journal line (newline included) for ``record``: its field values (a version 2
    row, fields in :data:`ROW_FIELDS` order: see "lines" above), and the MAC.

    On the caller's path, so it does as little as it can: no names, no default-value
    tests; with ``orjson`` installed (it comes with LangChain) the row is its encoding
    (the id and the time as text, made in Rust), else the standard library's C encoder's
    with the id and a UTC time as integers (no text to format, no float to print). A
    value JSON can't encode, which the record builder never lets through, is written as
    its ``str()``, so the event is kept."""
    cost = record.cost_usd
    saved = record.cost_saved_usd
    team = record.team
    if team is not None and not isinstance(team, (str, int)):
        team = team.pk
    body = None
    latency = record.latency_ms
    first = record.time_to_first_token_ms
    stream = record.stream_duration_ms
    if (
        _orjson_dumps is not None
        # (orjson writes a NaN or an infinity as null, the standard library as itself; the
        # builder makes every other float of a record JSON-safe: non-finite ones text)
        and (latency is None or -_INFINITY < latency < _INFINITY)
        and (first is None or -_INFINITY < first < _INFINITY)
        and (stream is None or -_INFINITY < stream < _INFINITY)
    ):
        try:
            body = _orjson_dumps(
                [
                    record.tracking_id,
                    record.created_at,
                    None if cost is None else str(cost),
                    None if saved is None else str(saved),
                    team,
                    *_plain_values(record),
                ]
            )
        except TypeError:  # (a value orjson does not take: a 65-bit int, a surrogate...)
            pass
    if body is None:
        tracking_id = record.tracking_id
        created_at = record.created_at
        row = [
            tracking_id.int if tracking_id.__class__ is _UUID else str(tracking_id),
            (created_at - _EPOCH) // _MICROSECOND
            if created_at.tzinfo is _UTC
            else created_at.isoformat(),
            None if cost is None else str(cost),
            None if saved is None else str(saved),
            team,
            *_plain_values(record),
        ]
        if _ROW_ENCODER is not None:
            body = "".join(_ROW_ENCODER(row, 0)).encode()
        else:  # pragma: no cover - a Python without the C accelerator
            body = _ENCODER.encode(row).encode()
    tag = (_sealer or _current_sealer()).copy()
    tag.update(body)
    return body[:-1] + b',"' + tag.hexdigest().encode() + b'"]\n'


_orjson_dumps: Callable[..., bytes] | None
try:  # (optional: a third of the row's cost; the record builder's values are plain JSON)
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - depends on the environment
    _orjson_dumps = None
_INFINITY = float("inf")


def _sealed(body: bytes) -> bytes:
    """``body`` (``{...}`` or ``[...]``) with its MAC added as a last member, and a newline."""
    tag = (_sealer or _current_sealer()).copy()
    tag.update(body)
    if body[-1:] == b"}":
        return b'%s,%s%s"}\n' % (body[:-1], _MAC_MEMBER, tag.hexdigest().encode())
    return b'%s,"%s"]\n' % (body[:-1], tag.hexdigest().encode())


def verified(line: bytes) -> bytes:
    """``line`` without its MAC (and newline), as it was MAC'd; :class:`ForgedLine` if
    the MAC is missing or wrong (every key of ``SECRET_KEY_FALLBACKS`` is tried too)."""
    line = line.rstrip(b"\r\n")
    close = line[-1:]
    if close == b"}":
        cut = len(line) - _TAG_CHARS - len(_MAC_MEMBER) - 3
        if cut < 1 or line[cut : cut + len(_MAC_MEMBER) + 1] != b"," + _MAC_MEMBER:
            raise ForgedLine("no MAC")
        tag = line[cut + len(_MAC_MEMBER) + 1 : -2]
    elif close == b"]":
        cut = len(line) - _TAG_CHARS - 4
        if cut < 1 or line[cut : cut + 2] != b',"':
            raise ForgedLine("no MAC")
        tag = line[cut + 2 : -2]
    else:
        raise ForgedLine("no MAC")
    if line[-2:-1] != b'"':
        raise ForgedLine("no MAC")
    body = line[:cut] + close
    if not any(hmac.compare_digest(tag, _mac(key, body)) for key in _keys()):
        raise ForgedLine("wrong MAC")
    return body


def _mac(key: bytes, body: bytes) -> bytes:
    """The tag of ``body``: keyed BLAKE2b, 16 bytes, in hex."""
    return blake2b(body, key=key[:64], digest_size=16).hexdigest().encode()


_MAC_MEMBER = b'"mac":"'
_TAG_CHARS = 32  # 16 bytes, in hex

#: The MAC of the current key (``SECRET_KEY``'s) over nothing yet, once derived: each line
#: is sealed by a copy of it (the key's block is not hashed again per line); forgotten when
#: the setting changes.
_sealer: Any = None


def _current_sealer() -> Any:
    global _sealer
    _sealer = blake2b(key=_keys()[0][:64], digest_size=16)
    return _sealer


def _keys() -> list[bytes]:
    """Keys derived (through ``salted_hmac``) from SECRET_KEY, then from each of
    SECRET_KEY_FALLBACKS."""
    from django.conf import settings

    cache_key = (settings.SECRET_KEY, tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ())))
    keys = _macs.get(cache_key)
    if keys is None:
        from django.utils.crypto import salted_hmac

        keys = [
            salted_hmac(f"{_KEY_SALT}.lines", "key", secret=s, algorithm="sha256").digest()
            for s in [cache_key[0], *cache_key[1]]
        ]
        _macs.clear()
        _macs[cache_key] = keys
    return keys


@receiver(setting_changed)
def _forget_keys(*, setting: str, **kwargs: Any) -> None:
    global _sealer
    if setting in ("SECRET_KEY", "SECRET_KEY_FALLBACKS"):
        _sealer = None
        _macs.clear()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@on_reload
def _forget_dir() -> None:
    global _site_dir
    _site_dir = None

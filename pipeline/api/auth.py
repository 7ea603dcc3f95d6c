"""API keys: who is calling, and which account's CDRs they may see.

A key belongs either to one customer account or to the admin role (every account). Keys are
random 256-bit tokens shown once at creation; the keys file keeps only their SHA-256. A fast
hash is the right tool here: a slow KDF (scrypt, PBKDF2) protects low-entropy passwords against
guessing, which a 256-bit random token does not need, and it would add tens of milliseconds to
every request.

The keys file is JSON, ``{"keys": [{"id", "sha256", "account", "admin", "label", "created"}]}``,
at ``--keys FILE``, else ``$CDRPIPE_API_KEYS``, else ``<data dir>/api-keys.json``. The service
re-reads it when it changes on disk, so creating or revoking a key needs no restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import data_dir, environment

__all__ = [
    "KEY_PREFIX",
    "KeyEntry",
    "KeyStore",
    "KeysFileError",
    "Principal",
    "create_key",
    "default_keys_path",
    "hash_key",
    "list_keys",
    "revoke_key",
]

_log = logging.getLogger(__name__)

KEY_PREFIX = "cdrp_"
#: Longest header value worth hashing; anything longer cannot be a key.
_MAX_KEY_LENGTH = 256


class KeysFileError(Exception):
    """The keys file cannot be read or written, or its content is not a keys file."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a valid key. ``account`` is None exactly for admins."""

    key_id: str
    account: str | None
    admin: bool


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One stored key: everything but the key itself."""

    id: str
    sha256: str
    account: str | None
    admin: bool
    label: str
    created: str

    def principal(self) -> Principal:
        return Principal(
            key_id=self.id, account=None if self.admin else self.account, admin=self.admin
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "account": self.account,
            "admin": self.admin,
            "label": self.label,
            "created": self.created,
        }


def default_keys_path() -> Path:
    """``$CDRPIPE_API_KEYS`` if set, else ``api-keys.json`` in the project data directory."""
    configured = environment().api_keys
    return configured.expanduser() if configured else data_dir() / "api-keys.json"


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key, as stored in the keys file."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _entry(raw: object, path: Path, index: int) -> KeyEntry:
    where = f"{path}: keys[{index}]"
    if not isinstance(raw, dict):
        raise KeysFileError(f"{where} is not an object")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise KeysFileError(f"{where}: sha256 must be 64 hex digits")
    try:
        bytes.fromhex(digest)
    except ValueError:
        raise KeysFileError(f"{where}: sha256 must be 64 hex digits") from None
    admin = raw.get("admin", False)
    account = raw.get("account")
    if not isinstance(admin, bool):
        raise KeysFileError(f"{where}: admin must be true or false")
    if not admin and (not isinstance(account, str) or not account):
        raise KeysFileError(f"{where}: a non-admin key needs a non-empty account")
    key_id = raw.get("id")
    if not isinstance(key_id, str) or not key_id:
        raise KeysFileError(f"{where}: id must be a non-empty string")
    return KeyEntry(
        id=key_id,
        sha256=digest.lower(),
        account=account if isinstance(account, str) else None,
        admin=admin,
        label=str(raw.get("label") or ""),
        created=str(raw.get("created") or ""),
    )


def _read(path: Path) -> list[KeyEntry]:
    """The entries of a keys file; a missing file holds no keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as ex:
        raise KeysFileError(f"cannot read keys file {path}: {ex}") from ex
    try:
        data = json.loads(text)
    except json.JSONDecodeError as ex:
        raise KeysFileError(f"{path} is not valid JSON: {ex}") from ex
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise KeysFileError(f'{path}: expected an object {{"keys": [...]}}')
    return [_entry(raw, path, i) for i, raw in enumerate(keys)]


def _write(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the keys file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"keys": [e.to_json() for e in entries]}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".api-keys.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(
    path: Path, *, account: str | None = None, admin: bool = False, label: str = ""
) -> tuple[str, KeyEntry]:
    """Add a new key to the file at `path`; returns (the key, its entry). The key is not
    stored anywhere: show it to the operator once."""
    if admin == (account is not None):
        raise ValueError("give exactly one of an account or the admin role")
    if account is not None and (not account or account != account.strip()):
        raise ValueError("account must be non-empty, without surrounding spaces")
    entries = _read(path)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = KeyEntry(
        id="k_" + secrets.token_hex(6),
        sha256=hash_key(key),
        account=account,
        admin=admin,
        label=label,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _write(path, [*entries, entry])
    return key, entry


def list_keys(path: Path) -> list[KeyEntry]:
    """The entries of the keys file (never the keys: only their hashes are stored)."""
    return _read(path)


def revoke_key(path: Path, key_id: str) -> bool:
    """Remove the key with id `key_id`; False if there was none."""
    entries = _read(path)
    kept = [e for e in entries if e.id != key_id]
    if len(kept) == len(entries):
        return False
    _write(path, kept)
    return True


class KeyStore:
    """The keys of a file, looked up by hash and re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, KeyEntry] = {}
        self.reload()

    def __len__(self) -> int:
        return len(self._by_hash)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> None:
        """Read the file now. A bad file raises and the keys in force stay as they were."""
        with self._lock:
            stamp = self._file_stamp()
            entries = _read(self.path)
            self._by_hash = {e.sha256: e for e in entries}
            self._stamp = stamp

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            self.reload()
        except KeysFileError as ex:
            # a half-edited file must not lock everyone out: keep the last good keys, say so
            # once, and look again when the file changes next
            _log.warning("keys file not reloaded, previous keys stay in force: %s", ex)
            with self._lock:
                self._stamp = stamp

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal of `key`, or None when it is missing or unknown."""
        if not key or len(key) > _MAX_KEY_LENGTH:
            return None
        self._refresh()
        entry = self._by_hash.get(hash_key(key))
        return entry.principal() if entry is not None else None

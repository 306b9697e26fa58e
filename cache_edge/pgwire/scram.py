"""SCRAM-SHA-256 for the PostgreSQL door: the server's side of the exchange (RFC 5802, 7677).

The SCRAM itself (nonces, message grammar, the proof check, the server signature) is
scramp's; this module adds what PostgreSQL adds around it:

* **Verifiers in pg_authid's format**, ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:
  <ServerKey>`` (base64), the string PostgreSQL stores for a password under
  ``password_encryption = 'scram-sha-256'``: :func:`make_verifier` makes one (``cache-edge
  keygen`` prints one per API key), :func:`parse_verifier` reads one, including one
  PostgreSQL computed.
* **The SCRAM user name is ignored**, as PostgreSQL ignores it: the tenant is the startup
  packet's ``user``. libpq sends an empty ``n=`` and asyncpg sends the user unescaped, both
  of which scramp's parser refuses, so scramp is shown a placeholder name and then given
  back the client-first-message-bare the client really sent (the proof is computed over it).
* **No channel binding.** Only ``SCRAM-SHA-256`` is advertised (:data:`MECHANISMS`), never
  ``-PLUS``: a client that demands binding (``p=tls-server-end-point``) fails; ``n`` and
  ``y`` (the client could bind but believes the server cannot) are accepted. If the door
  ever advertises ``-PLUS``, ``y`` must be refused from then on (it would be a downgrade).
  The door itself must check the mechanism named in SASLInitialResponse is in MECHANISMS.

**One verifier per login.** The server-first-message carries one salt and one iteration
count, and the client's proof is only good for the salted password they name, so a SCRAM
exchange can check one verifier, not several. A tenant's login is checked against the
*first* entry of its ``scram_verifiers`` (the "PostgreSQL-door key"); later entries are not
accepted by the door (a client using them fails), and are parsed only so that a mistake in
them is reported. Rotating the door key is therefore a flag day, as it is for a PostgreSQL
role's password: put the new key's verifier first once clients have the new key.
``ScramServerExchange(..., index=n)`` leaves the door room to choose another entry (e.g. by
a user-name suffix) without changing this module.

**Unknown tenants** get a decoy exchange (:meth:`ScramServerExchange.decoy`): the same
messages, the same work, a salt that is stable per tenant name (as PostgreSQL's
``scram_mock_salt``), and a failure at :meth:`~ScramServerExchange.finish`. The text of
:class:`ScramFailed` is for logs: the client must get the same error whatever failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

# scramp ships no type information (unused-ignore: for when the mypy config ignores it)
from scramp import ScramMechanism  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISMS",
    "ScramFailed",
    "ScramServerExchange",
    "Verifier",
    "make_verifier",
    "parse_verifier",
]

MECHANISMS = ("SCRAM-SHA-256",)
DEFAULT_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
# scramp refuses fewer iterations, more than this, and salts shorter than 12 bytes: checked
# when a verifier is read, so a bad one is found at config load and not at each login.
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 10_000_000
MIN_SALT_BYTES = 12
SALT_BYTES = 16  # what PostgreSQL generates
_KEY_BYTES = 32  # SHA-256
_PREFIX = "SCRAM-SHA-256$"
# Shown to scramp instead of the client's SCRAM user name (see the module docstring).
_PLACEHOLDER_USER = "tenant"
_DECOY_SALT_CONTEXT = b"cache-edge scram decoy salt\x00"
# Per process: a door with several processes or nodes should pass a shared decoy secret.
_PROCESS_DECOY_SECRET = secrets.token_bytes(32)


class ScramFailed(Exception):
    """The SCRAM exchange failed: a wrong proof, a malformed message, or a decoy exchange.

    The message says which, for logs; the client must be told only that authentication
    failed."""


@dataclass(frozen=True)
class Verifier:
    """A password's SCRAM-SHA-256 verifier; ``str()`` gives PostgreSQL's pg_authid form."""

    iterations: int
    salt: bytes
    # StoredKey checks a proof and ServerKey signs for the server: neither goes in a repr.
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_parameters(self.iterations, self.salt)
        for name, key in (("StoredKey", self.stored_key), ("ServerKey", self.server_key)):
            if len(key) != _KEY_BYTES:
                raise ValueError(
                    f"SCRAM verifier: {name} is {len(key)} bytes, a SHA-256 one has {_KEY_BYTES}"
                )

    def __str__(self) -> str:
        b64 = _b64encode
        return (
            f"{_PREFIX}{self.iterations}:{b64(self.salt)}"
            f"${b64(self.stored_key)}:{b64(self.server_key)}"
        )


def _check_parameters(iterations: int, salt: bytes) -> None:
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(
            f"SCRAM verifier: iteration count {iterations} is outside "
            f"{MIN_ITERATIONS}..{MAX_ITERATIONS}"
        )
    if len(salt) < MIN_SALT_BYTES:
        raise ValueError(
            f"SCRAM verifier: the salt is {len(salt)} bytes, at least {MIN_SALT_BYTES} are needed"
        )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"SCRAM verifier: the {what} is not valid base64") from None


def make_verifier(
    password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """The pg_authid-format SCRAM-SHA-256 verifier of ``password`` (a fresh 16-byte salt
    unless ``salt`` is given): what PostgreSQL stores for the same password, salt and
    iteration count."""
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    _check_parameters(iterations, salt)  # here for a clear message; scramp checks them too
    try:
        salt_out, stored_key, server_key, count = ScramMechanism(MECHANISMS[0]).make_auth_info(
            password, iteration_count=iterations, salt=salt
        )
    except Exception as exc:  # scramp's ScramException: a password SASLprep refuses
        raise ValueError(f"cannot make a SCRAM verifier for this password: {exc}") from None
    return str(Verifier(int(count), bytes(salt_out), bytes(stored_key), bytes(server_key)))


def parse_verifier(text: str) -> Verifier:
    """Read a pg_authid-format SCRAM-SHA-256 verifier; ValueError says what is wrong.

    The message never quotes the verifier (its keys are secrets)."""
    if not isinstance(text, str):
        raise ValueError(f"SCRAM verifier: expected a str, got {type(text).__name__}")
    if not text.startswith(_PREFIX):
        raise ValueError(
            "SCRAM verifier: does not start with 'SCRAM-SHA-256$' (the form is "
            "'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>')"
        )
    parts = text[len(_PREFIX) :].split("$")
    if len(parts) != 2:
        raise ValueError(
            "SCRAM verifier: expected '<iterations>:<salt>$<StoredKey>:<ServerKey>' "
            "after 'SCRAM-SHA-256$'"
        )
    params, keys = (p.split(":") for p in parts)
    if len(params) != 2:
        raise ValueError("SCRAM verifier: expected '<iterations>:<salt>' after 'SCRAM-SHA-256$'")
    if len(keys) != 2:
        raise ValueError("SCRAM verifier: expected '<StoredKey>:<ServerKey>' after the salt")
    count_text, salt_text = params
    if not (count_text.isascii() and count_text.isdigit()):
        raise ValueError("SCRAM verifier: the iteration count is not a decimal number")
    if len(count_text) > 12:
        raise ValueError(f"SCRAM verifier: the iteration count is above {MAX_ITERATIONS}")
    return Verifier(
        int(count_text),
        _b64decode(salt_text, "salt"),
        _b64decode(keys[0], "StoredKey"),
        _b64decode(keys[1], "ServerKey"),
    )


_NEW, _STARTED, _DONE = "new", "started", "done"


class ScramServerExchange:
    """One SCRAM-SHA-256 login, the server's side: :meth:`start` then :meth:`finish`.

    Carries the SASL payloads only; framing them (AuthenticationSASLContinue/Final) is the
    door's. Checks the proof against ``verifiers[index]`` (see the module docstring for why
    only one); every entry must be a valid verifier. Each instance serves one exchange."""

    def __init__(self, verifiers: Sequence[Verifier | str], *, index: int = 0) -> None:
        parsed = [v if isinstance(v, Verifier) else parse_verifier(v) for v in verifiers]
        if not parsed:
            raise ValueError("no SCRAM verifiers: use ScramServerExchange.decoy() for this login")
        if not 0 <= index < len(parsed):
            raise ValueError(f"verifier index {index} is outside the {len(parsed)} given")
        self._init(parsed[index], decoy=False)

    def _init(self, verifier: Verifier, *, decoy: bool) -> None:
        self._verifier = verifier
        self._decoy = decoy
        self._state = _NEW
        self._server = ScramMechanism(MECHANISMS[0]).make_server(self._auth_info)

    @classmethod
    def decoy(
        cls,
        tenant: str = "",
        *,
        secret: bytes | None = None,
        iterations: int = DEFAULT_ITERATIONS,
    ) -> ScramServerExchange:
        """An exchange for a tenant that does not exist (or has no verifier): it looks and
        costs the same as a real one and always fails at :meth:`finish`.

        Its salt is derived from ``tenant`` and ``secret``, so repeated logins as the same
        unknown tenant see the same salt, as they would for a real one; give every process
        of every node the same ``secret`` (the default is per process), and the iteration
        count real verifiers use. Its keys are random: no password matches them."""
        key = _PROCESS_DECOY_SECRET if secret is None else secret
        digest = hmac.new(
            key, _DECOY_SALT_CONTEXT + tenant.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        verifier = Verifier(
            iterations,
            digest[:SALT_BYTES],
            secrets.token_bytes(_KEY_BYTES),
            secrets.token_bytes(_KEY_BYTES),
        )
        exchange = cls.__new__(cls)
        exchange._init(verifier, decoy=True)
        return exchange

    def _auth_info(self, _username: str) -> tuple[bytes, bytes, bytes, int]:
        v = self._verifier
        return v.salt, v.stored_key, v.server_key, v.iterations

    def start(self, client_first: bytes) -> bytes:
        """The client-first-message (SASLInitialResponse's data) in, the
        server-first-message out; ScramFailed if the message is malformed or asks for
        channel binding."""
        if self._state != _NEW:
            raise RuntimeError("ScramServerExchange.start() called twice")
        self._state = _DONE  # unless it succeeds
        try:
            text = client_first.decode("utf-8")
            shown, bare = _without_user_name(text)
            self._server.set_client_first(shown)
            # The proof covers what the client sent, not the placeholder.
            self._server.client_first_bare = bare
            server_first = str(self._server.get_server_first()).encode("ascii")
        except ScramFailed:
            raise
        except Exception as exc:
            # Any failure on this attacker-controlled input is a failed login; scramp's
            # exception types have changed between releases.
            raise ScramFailed(f"bad SCRAM client-first-message: {exc}") from exc
        self._state = _STARTED
        return server_first

    def finish(self, client_final: bytes) -> bytes:
        """The client-final-message (SASLResponse's data) in, the server-final-message
        (for AuthenticationSASLFinal) out; ScramFailed on a wrong proof, a malformed
        message, or a decoy exchange."""
        if self._state != _STARTED:
            raise RuntimeError("ScramServerExchange.finish() needs a successful start() first")
        self._state = _DONE
        failure: Exception | None = None
        server_final = b""
        try:
            self._server.set_client_final(client_final.decode("utf-8"))
            server_final = str(self._server.get_server_final()).encode("ascii")
        except Exception as exc:
            failure = exc
        if self._decoy:
            raise ScramFailed("no such tenant (a decoy exchange always fails)") from failure
        if failure is not None:
            raise ScramFailed(f"SCRAM client-final-message refused: {failure}") from failure
        return server_final


def _without_user_name(text: str) -> tuple[str, str]:
    """(the message with its SCRAM user name replaced by a placeholder, the original
    client-first-message-bare)."""
    first = text.find(",")
    second = text.find(",", first + 1) if first >= 0 else -1
    if second < 0:
        raise ScramFailed("bad SCRAM client-first-message: no GS2 header")
    header, bare = text[: second + 1], text[second + 1 :]
    if not bare.startswith("n="):
        raise ScramFailed("bad SCRAM client-first-message: the user name ('n=') is not first")
    end = bare.find(",")
    if end < 0:
        raise ScramFailed("bad SCRAM client-first-message: no nonce after the user name")
    return f"{header}n={_PLACEHOLDER_USER}{bare[end:]}", bare

"""Who may talk to the server: TLS (optionally mutual) and bearer tokens.

* **TLS**: ``--tls-cert``/``--tls-key`` (PEM); with ``--client-ca`` the client must present a
  certificate signed by that CA, or the handshake fails (mutual TLS).
* **Tokens**: ``--token-file F`` holds one token a line, optionally limited to named models:
  ``TOKEN`` or ``TOKEN model_a,model_b``; ``#`` starts a comment. A client sends
  ``authorization: Bearer TOKEN`` in its call metadata. Every allowed token is compared, in
  constant time (``hmac.compare_digest``), so the time taken does not say how much of a
  guess was right. No or a wrong token: the call ends ``UNAUTHENTICATED``; a frame for a model
  its token does not name: ``PERMISSION_DENIED`` for that frame.
* **Plain text** is for loopback: :func:`check_listen` refuses any other address without TLS
  unless ``insecure`` is set (``--insecure``).

Health checks need no token: orchestrators probe them without credentials.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["AuthError", "Grant", "TokenTable", "check_listen", "is_loopback", "server_credentials"]


class AuthError(ValueError):
    """A configuration that would not be safe or cannot be read (a bad token file, plain text off loopback)."""


@dataclass(frozen=True)
class Grant:
    """What a token allows: every model (``models`` None) or the named ones."""

    label: str  # a printable name for logs: the token's line number, never the token
    models: frozenset[str] | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


OPEN = Grant("open")  # no token file: everyone may use everything


class TokenTable:
    def __init__(self, entries: list[tuple[bytes, Grant]]) -> None:
        if not entries:
            raise AuthError("a token file must hold at least one token")
        self._entries = entries

    @classmethod
    def read(cls, path: str | Path) -> TokenTable:
        entries = []
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise AuthError(f"cannot read token file {path}: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2 or len(fields[0]) < 16:
                raise AuthError(f"{path}:{n}: expected 'TOKEN [model,model...]' with a token of 16+ characters")
            models = frozenset(m for m in fields[1].split(",") if m) if len(fields) == 2 else None
            entries.append((fields[0].encode(), Grant(f"token#{n}", models)))
        return cls(entries)

    def grant(self, metadata) -> Grant | None:
        """The grant of the bearer token in ``metadata`` (gRPC invocation metadata), or None."""
        offered = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                if text.startswith("Bearer "):
                    offered = text[len("Bearer "):].strip().encode()
        found = None
        for token, grant in self._entries:  # no early exit: every token costs the same compare
            if hmac.compare_digest(token, offered) and found is None:
                found = grant
        return found if offered else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, tls: bool, insecure: bool) -> None:
    if not tls and not insecure and not is_loopback(host):
        raise AuthError(f"refusing to listen on {host} in plain text: give --tls-cert and --tls-key "
                        "(see README, Docker), or --insecure to accept that anyone on the network can read "
                        "and send frames")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with ``client_ca``, clients must present a certificate it signed."""
    pair = [(_read(key, "TLS key"), _read(cert, "TLS certificate"))]
    if client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=_read(client_ca, "client CA"),
                                       require_client_auth=True)

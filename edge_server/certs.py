"""Certificates made at start: a CA, a server certificate and (optionally) a client one, as PEM files.

For tests and for `docker compose` (the `certs` service), where no certificate authority is at
hand: ``python -m edge_server.certs --out DIR --host edge --host localhost [--client]``. Writes
``ca.pem``, ``server.pem``, ``server.key`` (and ``client.pem``, ``client.key``); files that
already exist are kept, so a restart keeps the devices' trust. Needs the ``cryptography``
package (``pip install 'splitedge[certs]'``); the server itself does not.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path

__all__ = ["make_certs"]


def make_certs(out: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), client: bool = True,
               days: int = 365) -> dict[str, Path]:
    """Write a fresh CA, a server certificate for ``hosts`` (DNS names or IP addresses) signed by it,
    and with ``client`` a client certificate; returns their paths by role."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject_key, subject: str, issuer_key, ca: bool, sans=()):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("splitedge CA"))
             .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(path: Path, obj) -> Path:
        if hasattr(obj, "private_bytes"):
            path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
            path.chmod(0o600)
        else:
            path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
        return path

    def san(host: str):
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    out.mkdir(parents=True, exist_ok=True)
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    paths = {"ca": write(out / "ca.pem", cert(ca_key, "splitedge CA", ca_key, True)),
             "server_cert": write(out / "server.pem", cert(srv_key, hosts[0], ca_key, False, [san(h) for h in hosts])),
             "server_key": write(out / "server.key", srv_key)}
    if client:
        cl_key = ec.generate_private_key(ec.SECP256R1())
        paths["client_cert"] = write(out / "client.pem", cert(cl_key, "splitedge device", ca_key, False))
        paths["client_key"] = write(out / "client.key", cl_key)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_server.certs", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--host", action="append", help="DNS name or IP address the server answers to (repeatable)")
    p.add_argument("--client", action="store_true", help="also a client certificate (mutual TLS)")
    args = p.parse_args(argv)
    if (args.out / "ca.pem").exists() and (args.out / "server.pem").exists():
        print(f"certificates in {args.out} kept")
        return 0
    paths = make_certs(args.out, tuple(args.host or ("localhost", "127.0.0.1")), args.client)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Health checks of docker-compose.yml's services, run inside their containers.

    python scripts/container/healthcheck.py grpc HOST:PORT CA.pem   grpc.health.v1 over TLS: SERVING?
    python scripts/container/healthcheck.py tcp HOST:PORT...        does each accept a TCP connection?

Exit 0 when healthy, 1 with one line on stderr otherwise. A script rather than `python -c "..."` in
the compose file because podman's Docker-compatible API (4.3) splits a healthcheck's arguments at
spaces, which breaks any inline program.
"""

from __future__ import annotations

import socket
import sys


def check_grpc(target: str, ca: str) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(f.read())
    with grpc.secure_channel(target, creds) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_tcp(target: str) -> str | None:
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        return f"{target}: {exc.strerror or exc}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "grpc":
        problem = check_grpc(argv[1], argv[2])
    elif len(argv) >= 2 and argv[0] == "tcp":
        problem = next(filter(None, map(check_tcp, argv[1:])), None)
    else:
        print("usage: healthcheck.py grpc HOST:PORT CA.pem | tcp HOST:PORT...", file=sys.stderr)
        return 2
    if problem:
        print(f"healthcheck: unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

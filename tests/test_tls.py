"""Transport security (issue 15, item 3): TLS, mutual TLS, bearer tokens, no plain text off loopback.

Certificates are made at run time (`edge_server.certs`, the `cryptography` package); every server
here listens on 127.0.0.1.
"""

from __future__ import annotations

import hmac
import subprocess

import grpc
import pytest
import torch

from edge_server import EdgeServer, ModelRegistry, ServerOptions
from edge_server.auth import AuthError, TokenTable, check_listen
from mobile_client.edge_client import EdgeClient, EdgeUnavailable
from protos import splitedge_pb2 as pb
from protos import splitedge_pb2_grpc as pb_grpc

from tests.conftest import ENV, ROOT, splitedge
from tests.edge_helpers import MODEL, InProcessServer, make_certs, served_model

TOKEN, LIMITED = "a-long-enough-token-0001", "a-token-for-one-model-02"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# device tokens\n{TOKEN}\n{LIMITED} some_other_model  # only that one\n")
    return path


@pytest.fixture(scope="module")
def mtls_server(certs, token_file):
    options = ServerOptions(tls_cert=str(certs["server_cert"]), tls_key=str(certs["server_key"]),
                            client_ca=str(certs["ca"]), token_file=str(token_file))
    with InProcessServer(options) as srv:
        yield srv


@pytest.fixture(scope="module")
def payload():
    return served_model().model.encode_message(torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)))


def _creds(certs, client=True, ca=None):
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or certs["ca"]).read_bytes(),
        private_key=certs["client_key"].read_bytes() if client else None,
        certificate_chain=certs["client_cert"].read_bytes() if client else None)


def _describe(channel, token=None):
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return pb_grpc.SplitEdgeStub(channel).Describe(pb.DescribeRequest(), timeout=10, metadata=metadata)


def test_mutual_tls_and_a_token_let_a_client_in(mtls_server, certs):
    with grpc.secure_channel(mtls_server.target, _creds(certs)) as ch:
        assert [m.name for m in _describe(ch, TOKEN).models] == [MODEL]


@pytest.mark.parametrize("who", ["plain text", "no client certificate", "certificate from another CA"])
def test_a_wrong_client_is_refused_at_the_handshake(mtls_server, certs, other_ca, who):
    if who == "plain text":
        channel = grpc.insecure_channel(mtls_server.target)
    elif who == "no client certificate":
        channel = grpc.secure_channel(mtls_server.target, _creds(certs, client=False))
    else:
        channel = grpc.secure_channel(mtls_server.target, _creds(other_ca, ca=certs["ca"]))
    with channel, pytest.raises(grpc.RpcError) as info:
        _describe(channel, TOKEN)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the connection never came up: no call was made


@pytest.mark.parametrize("token", [None, "wrong-token-of-some-length", TOKEN[:-1], TOKEN + "x"])
def test_no_or_a_wrong_token_is_unauthenticated(mtls_server, certs, payload, token):
    with grpc.secure_channel(mtls_server.target, _creds(certs)) as ch:
        with pytest.raises(grpc.RpcError) as info:
            _describe(ch, token)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in info.value.details()
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        with pytest.raises(grpc.RpcError) as info:
            list(pb_grpc.SplitEdgeStub(ch).Infer(iter([pb.Frame(frame_id=1, payload=payload)]), timeout=10,
                                                 metadata=metadata))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_limited_to_other_models_is_denied_per_frame(mtls_server, certs, payload):
    with grpc.secure_channel(mtls_server.target, _creds(certs)) as ch:
        assert list(_describe(ch, LIMITED).models) == []  # it sees only what it may use
        frames = [pb.Frame(frame_id=1, payload=payload), pb.Frame(frame_id=2, probe=b"x")]
        results = list(pb_grpc.SplitEdgeStub(ch).Infer(iter(frames), timeout=30,
                                                       metadata=(("authorization", f"Bearer {LIMITED}"),)))
    assert [r.code for r in results] == [grpc.StatusCode.PERMISSION_DENIED.value[0], 0]
    assert MODEL in results[0].error


def test_the_device_client_speaks_mutual_tls_with_a_token(mtls_server, certs, payload):
    client = EdgeClient(mtls_server.target, tls_ca=str(certs["ca"]), tls_cert=str(certs["client_cert"]),
                        tls_key=str(certs["client_key"]), token=TOKEN)
    try:
        assert [m.name for m in client.connect(timeout_s=10).models] == [MODEL]
        result, _ = client.infer(pb.Frame(frame_id=5, payload=payload), timeout_s=30)
        assert result.code == 0 and result.detections
    finally:
        client.close()
    wrong = EdgeClient(mtls_server.target, tls_ca=str(certs["ca"]), tls_cert=str(certs["client_cert"]),
                       tls_key=str(certs["client_key"]), token="not-the-token-at-all")
    with pytest.raises(EdgeUnavailable, match="UNAUTHENTICATED"):
        wrong.connect(timeout_s=10)


def test_tls_without_client_certificates(certs):
    options = ServerOptions(tls_cert=str(certs["server_cert"]), tls_key=str(certs["server_key"]))
    with InProcessServer(options) as srv:
        with grpc.secure_channel(srv.target, _creds(certs, client=False)) as ch:
            assert [m.name for m in _describe(ch).models] == [MODEL]
        with grpc.insecure_channel(srv.target) as ch, pytest.raises(grpc.RpcError) as info:
            _describe(ch)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "edge.example.com"])
def test_plain_text_off_loopback_needs_insecure(host):
    with pytest.raises(AuthError, match="--insecure"):
        check_listen(host, tls=False, insecure=False)
    with pytest.raises(AuthError, match="plain text"):
        EdgeServer(ModelRegistry([served_model()]), ServerOptions(host=host))
    check_listen(host, tls=False, insecure=True)
    check_listen(host, tls=True, insecure=False)
    for loopback in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_listen(loopback, tls=False, insecure=False)


def test_serve_refuses_plain_text_on_all_interfaces_before_loading_anything():
    done = subprocess.run(splitedge("serve", "--host", "0.0.0.0", "--port", "0"), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 in plain text" in done.stderr + done.stdout
    assert "serving" not in done.stdout


def test_tokens_are_all_compared_in_constant_time(monkeypatch, tmp_path):
    path = tmp_path / "tokens"
    path.write_text("".join(f"token-number-{i:04d}-padding\n" for i in range(5)))
    table = TokenTable.read(path)
    calls, compare = [], hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr("edge_server.auth.hmac.compare_digest", counting)
    assert table.grant([("authorization", "Bearer token-number-0000-padding")]).label == "token#1"
    assert len(calls) == 5  # a match on the first token still compares the other four
    assert table.grant([("authorization", "token-number-0000-padding")]) is None  # not a Bearer header
    assert table.grant([]) is None


@pytest.mark.parametrize("text,match", [("", "at least one token"), ("short\n", "16\\+ characters"),
                                        ("a-long-enough-token-0001 m1 m2\n", "TOKEN \\[model")])
def test_bad_token_files_are_refused(tmp_path, text, match):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(AuthError, match=match):
        TokenTable.read(path)

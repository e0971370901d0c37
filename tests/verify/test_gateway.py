"""Host verifiers for the gateway (roles/llm_gateway), read-only: HAProxy runs, its configuration and
runtime socket are root-only, clients without the key are refused, every server of the backend `llm`
is in rotation (or drained for a recorded reason), and the backup answers through the gateway's own
route to it (on a fleet gateway: every host's gateway, through the route that adds its key). The
failover itself is exercised by playbooks/drill.yml, never by a verifier.

Skipped on a host without a gateway (no llm_gateway.fact).
"""

import shlex

import pytest

from tests.verify.verify_helpers import certificate_days_left, local_fact

# A certificate that expires within this many days fails its verifier (renew it, or rerun the gateway
# role: a private CA's certificate is issued anew 30 days before it expires).
CERTIFICATE_WARNING_DAYS = 30
PEM = "/etc/haproxy/llm-gateway.pem"

# HAProxy's runtime API, asked by the host's python3 (root only) through the master CLI: `@1` is the
# current worker (old ones, still finishing requests after a reload, keep stale state).
RUNTIME = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_UNIX);s.settimeout(10);s.connect(sys.argv[1])\n"
    "s.sendall(('@1 '+sys.argv[2]+'; quit\\n').encode())\n"
    "data=b''\n"
    "while True:\n"
    "    chunk=s.recv(65536)\n"
    "    if not chunk: break\n"
    "    data+=chunk\n"
    "sys.stdout.write(data.decode())\n"
)
# GET path over a Unix socket (the gateway's listener in front of a backup): prints the status code.
UNIX_GET = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_UNIX);s.settimeout(30);s.connect(sys.argv[1])\n"
    "s.sendall(b'GET '+sys.argv[2].encode()+b' HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n')\n"
    "print(s.recv(64).split()[1].decode())\n"
)


@pytest.fixture
def gateway(host) -> dict:
    fact = local_fact(host, "llm_gateway")
    if fact is None:
        pytest.skip("no gateway on this host (no llm_gateway.fact)")
    return fact


def runtime(host, gateway: dict, command: str):
    socket_path = gateway.get("master_socket") or "/run/haproxy/master.sock"
    with host.sudo():
        return host.run(f"python3 -c {shlex.quote(RUNTIME)} {shlex.quote(socket_path)} {shlex.quote(command)}")


def servers(host, gateway: dict) -> dict[str, dict]:
    result = runtime(host, gateway, "show stat")
    assert result.rc == 0, f"HAProxy's runtime API did not answer: {result.stderr.strip()[-300:]}"
    header, *rows = result.stdout.lstrip("# ").splitlines()
    names = header.split(",")
    table = [dict(zip(names, row.split(","), strict=False)) for row in rows if row]
    # The frontend and the backend are both named llm: only the backend's servers.
    return {
        row["svname"]: row
        for row in table
        if row.get("pxname") == "llm" and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def test_haproxy_is_enabled_and_active(host, gateway):
    service = host.service("haproxy.service")
    assert service.is_enabled, "haproxy.service is not enabled"
    state = host.run("systemctl is-active haproxy.service").stdout.strip()
    assert state == "active", f"haproxy.service is {state}; see journalctl -u haproxy.service"


def test_the_configuration_and_runtime_socket_are_root_only(host, gateway):
    with host.sudo():
        sockets = [gateway["admin_socket"], gateway.get("master_socket") or "/run/haproxy/master.sock"]
        for path in ("/etc/haproxy/haproxy.cfg", *sockets):
            found = host.file(path)
            assert found.exists, f"{path} is missing"
            assert (found.user, oct(found.mode)) == ("root", "0o600"), f"{path} is {found.user} {oct(found.mode)}"


def test_a_client_without_the_key_is_refused(host, gateway):
    url = shlex.quote(gateway["url"] + "/v1/models")
    status = host.run(f"curl -sk -o /dev/null -w '%{{http_code}}' --max-time 10 {url}").stdout.strip()
    assert status == "401", f"{gateway['url']}/v1/models without a key answered {status}; expected 401"


def test_every_server_is_in_rotation_or_drained_for_a_reason(host, gateway):
    found = servers(host, gateway)
    assert sorted(found) == sorted(gateway["servers"]), f"the backend llm has {sorted(found)}"
    if gateway.get("fleet"):  # a fleet gateway: every host's gateway is in rotation, none a backup
        assert all(found[name]["bck"] == "0" for name in gateway["servers"]), "a host is a backup server"
    else:
        assert found[gateway["servers"][0]]["bck"] == "0", "the primary is a backup server"
        assert all(found[name]["bck"] == "1" for name in gateway["servers"][1:]), "a backup route is missing"
    with host.sudo():  # a server's reasons: files in its directory (roles/llm_gateway, drain and enable)
        drained = {name for name in found if host.run(f"ls -A /var/lib/llm-toolkit/gateway/llm/{name}").stdout.strip()}
    out = {
        name: f"{row['status']} (last check: {row.get('check_status') or 'none'})"
        for name, row in found.items()
        if row["status"] != "UP" and name not in drained
    }
    assert not out, f"out of rotation without a recorded reason: {out}; see journalctl -u haproxy.service"
    health = host.run(f"curl -sk -o /dev/null -w '%{{http_code}}' --max-time 10 {gateway['url']}/health").stdout
    assert health.strip() == "200", f"{gateway['url']}/health answered {health.strip()}"


def routes(gateway: dict) -> dict[str, str]:
    """The gateway's own listeners in front of its servers: a fleet gateway's, one per host (it adds that
    host's key); a host gateway's, one per backup (it removes vLLM's key)."""
    if gateway.get("fleet"):
        return {name: f"/run/haproxy/fleet-{name}.sock" for name in gateway["servers"]}
    return {name: f"/run/haproxy/{name}.sock" for name in gateway["servers"][1:]}


def test_each_backup_answers_through_the_gateways_route(host, gateway):
    for name, route in routes(gateway).items():
        with host.sudo():
            assert host.file(route).exists, f"the gateway's route to {name} ({route}) is missing"
            result = host.run(f"python3 -c {shlex.quote(UNIX_GET)} {route} /v1/models")
        assert result.stdout.strip() == "200", f"{name} through {route} answered {result.stdout.strip() or 'nothing'}"


def test_the_certificate_is_valid_for_30_days_more(host, gateway):
    if not gateway.get("tls"):
        pytest.skip("the gateway serves plain HTTP on loopback")
    answer = runtime(host, gateway, f"show ssl cert {PEM}")
    days = certificate_days_left(answer.stdout)
    assert days is not None, f"HAProxy shows no certificate for {PEM}: {answer.stdout.strip()[-200:]}"
    assert days >= CERTIFICATE_WARNING_DAYS, (
        f"the gateway's certificate expires in {days} days; renew it (or rerun --tags gateway with a private CA)"
    )

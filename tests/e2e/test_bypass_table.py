"""Every kind of bypass attempt, against the shim directly, in every namespace policy it
applies to: one row per (policy, attempt), each refused with its expected gRPC status, and
nothing of them in the store once all rows have run. Each policy also has positive controls
(its legitimate callers land), before and after the attempts, so refusing everything fails.

Policies, as a deployment would run them:

- `trust` with a token: `--auth-token-file` and `--auth-scope all` (registrations need the
  token too), on the embedded store;
- `pod`: `--namespace-policy pod --on-mismatch reject --push-namespace-policy pod` plus a
  token for gateways, on the real kube-apiserver, with a Pod of `shop` at 127.0.0.12 on the
  shim's node; calls leave from that address (curl `--interface`);
- `peer`: mutual TLS (`--tls-cert/--tls-key/--tls-client-ca`), `--on-mismatch reject`,
  plus a token for gateways; a CA and SPIFFE client certificates
  (`spiffe://cluster.local/ns/<ns>/sa/default`) made here with the `openssl` CLI.

Every call is sent by curl (`raw_call`), so the path, the headers and the source address
reach the shim exactly as written.
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import grpc

from apiserver_harness import apiserver  # noqa: F401  (fixture)
from envoy_harness import REGISTER_A, REGISTER_B, raw_call, register_request
from shim_harness import shims, wait_until  # noqa: F401  (fixture)
from test_filter_bad_input import frame
from test_identity_bypass import VARIANTS
from test_pod_identity import NODE, PUSH, make_pod

STATUS = {str(c.value[0]): c.name for c in grpc.StatusCode}
OK, UNAUTHENTICATED, DENIED, INVALID = "OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"
FORGED_NS = "kube-system"
POD_IP, NO_POD_IP = "127.0.0.12", "127.0.0.13"
# A few spellings of both registration paths; the shim refuses them before any policy.
PATH_VARIANTS = [VARIANTS[i] for i in (0, 2, 3, 4, 7, 9, 11)]
# Kinds that a policy does not have, and why (printed under the table).
NOT_APPLICABLE = [
    ("trust", "forged namespace", "trust takes an authenticated caller's namespace as given"),
    ("trust", "certificate of another namespace", "no TLS"),
    ("pod", "certificate of another namespace", "no TLS; the peer address is the identity"),
]


@dataclass
class Client:
    """Where and how a call is sent: the shim's address, the source address to bind (a pod's),
    TLS files (`ca`, and `cert`/`key` for a client certificate)."""

    target: str
    name: str
    src: str | None = None
    tls: dict | None = None

    def call(self, path: str, body: bytes, headers: dict | None = None) -> tuple[str, str]:
        r = raw_call(self.target, path, frame(body), headers=headers, tls=self.tls, interface=self.src, allow_reset=True)
        code = r["headers"].get("grpc-status")
        msg = urllib.parse.unquote(r["headers"].get("grpc-message", ""))
        return STATUS.get(code, f"HTTP {r['http']}, grpc-status {code}"), msg


METHODS = {REGISTER_A: "A", REGISTER_B: "B", PUSH: "Push"}


def shown_path(path: str) -> str:
    """The path for the table: the method (A, B or Push) and what was added to it; a variant
    as the part around where it differs from the method's path."""
    for full, short in METHODS.items():
        if path.startswith(full):
            return short + path[len(full):]
    loose = urllib.parse.unquote(path).lower()
    canonical = max(METHODS, key=lambda m: len(os.path.commonprefix([m.lower(), loose]))
                    + len(os.path.commonprefix([m.lower()[::-1], loose[::-1]])))
    start = len(os.path.commonprefix([canonical, path]))
    return f"{METHODS[canonical]}~ ...{path[max(0, start - 8):start + 12]}..."


@dataclass
class Row:
    policy: str
    attempt: str
    path: str
    namespace: str
    client: str
    want: str
    got: str
    message: str


class Table:
    """Runs the attempts of one policy and records a row for each."""

    def __init__(self, protos, rows: list[Row], policy: str, refusal: str, tmp: Path):
        """`refusal`: what the policy answers a call on the registration paths from a caller
        it does not let in. Writes the policy's token file (`token_file`, holding `token`)."""
        self.protos, self.rows, self.policy, self.refusal = protos, rows, policy, refusal
        self.n = 0
        # (namespace, interface) of every call the policy accepted.
        self.accepted: set[tuple[str, str]] = set()
        self.token = f"{policy}-one"
        self.token_file = tmp / f"{policy}.token"
        self.token_file.write_text(self.token + "\n")

    def iface(self, forged: bool) -> str:
        self.n += 1
        return f"org.forged.{self.policy}{self.n}" if forged else f"org.{self.policy}.Legit{self.n}"

    def register(self, ns: str, iface: str) -> bytes:
        return register_request(self.protos, ns, "cart", [iface]).SerializeToString()

    def push(self, ns: str, iface: str) -> bytes:
        api = self.protos.api
        # Without results: a refused mapping is the call's status.
        return api.PushMappingsRequest(
            batch_id=f"{self.policy}-{self.n}", source="bypass-table", want_results=False,
            mappings=[api.Mapping(namespace=ns, interface_name=iface, application_names=["cart"])],
        ).SerializeToString()

    def row(self, attempt: str, client: Client, path: str, ns: str, want: str, token: str | None = None,
            headers: dict | None = None, iface: str | None = None) -> tuple[str, str]:
        """One call: a registration (either flavour) or a PushMappings batch naming `ns`,
        on `path` as written. Attempts get a fresh `org.forged.*` interface."""
        iface = iface or self.iface(forged=want != OK)
        is_push = path.split("?")[0] == PUSH
        body = self.push(ns, iface) if is_push else self.register(ns, iface)
        h = dict(headers or {})
        if token is not None:
            h["authorization"] = f"Bearer {token}"
        got, msg = client.call(path, body, h)
        cred = client.name + (f", token {token}" if token else "") + "".join(f", {k}: {v}" for k, v in (headers or {}).items())
        self.rows.append(Row(self.policy, attempt, shown_path(path), ns, cred, want, got, msg))
        return got, msg

    def ok(self, attempt: str, client: Client, path: str, token: str | None = None) -> None:
        """A legitimate call into `shop`: a positive control."""
        iface = self.iface(forged=False)
        self.row(attempt, client, path, "shop", want=OK, token=token, iface=iface)
        self.accepted.add(("shop", iface))

    def opening(self, client: Client, token: str | None = None) -> None:
        """Both positive controls (a registration and a batch from `client`, with `token`),
        then the attempts every policy has, from `client` without the token."""
        self.ok("positive control", client, REGISTER_A, token)
        self.ok("positive control", client, PUSH, token)
        self.common(client, FORGED_NS)

    def rotation(self, poller: Client, stale: list[tuple[Client, str]]) -> str:
        """Rotates the token (polling a batch of `poller` with the new one), then sends the old
        one from each (client, path) of `stale`. Returns the new token."""
        old, new, iface = self.token, f"{self.policy}-two", f"org.{self.policy}.Rotated"
        rotate(self.token_file, new, lambda: self.row("rotation (poll)", poller, PUSH, "shop", want=OK, token=new, iface=iface)[0] == OK)
        self.accepted.add(("shop", iface))
        self.token = new
        for client, path in stale:
            self.row("stale token after rotation", client, path, FORGED_NS, want=UNAUTHENTICATED, token=old)
        return new

    def common(self, client: Client, ns: str) -> None:
        """Query strings, path variants and the forged ack header: calls from `client`
        naming `ns` that the policy refuses on the exact path."""
        for base in (REGISTER_A, REGISTER_B, PUSH):
            self.row("query string", client, base + "?x=1", ns, want=self.refusal)
        for path in PATH_VARIANTS:
            self.row("path variant", client, path, ns, want=INVALID)
        self.row("forged x-snp-ack header", client, REGISTER_A, ns, want=self.refusal, headers={"x-snp-ack": "1"})
        self.row("forged x-snp-ack header", client, REGISTER_B + "?x=1", ns, want=self.refusal, headers={"x-snp-ack": "1"})


def rotate(token_file: Path, token: str, accepted) -> None:
    """Replaces the token file atomically (as the kubelet swaps a Secret volume), then waits
    until the shim, which re-reads it about every second, accepts the new token."""
    tmp = token_file.with_name(token_file.name + ".new")
    tmp.write_text(token + "\n")
    os.replace(tmp, token_file)
    assert wait_until(accepted, timeout=20, interval=0.2), "the rotated token was never accepted"


def openssl(*args: str) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"openssl {' '.join(args)}: {res.stderr}"


def certificates(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, and SPIFFE client certificates for `shop`
    and `payments`, with the openssl CLI (EC P-256)."""
    d.mkdir()
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "1",
            "-subj", "/CN=bypass-table-ca", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    out = {"ca": d / "ca.crt"}
    leaves = {
        "server": ("subjectAltName=DNS:localhost,IP:127.0.0.1", "serverAuth"),
        "shop": ("subjectAltName=URI:spiffe://cluster.local/ns/shop/sa/default", "clientAuth"),
        "payments": ("subjectAltName=URI:spiffe://cluster.local/ns/payments/sa/default", "clientAuth"),
    }
    for serial, (name, (san, usage)) in enumerate(leaves.items(), start=2):
        ext = d / f"{name}.ext"
        ext.write_text(f"{san}\nextendedKeyUsage={usage}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        openssl("req", "-new", *key, "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                "-set_serial", str(serial), "-days", "1", "-out", str(d / f"{name}.crt"), "-extfile", str(ext))
        out[name] = d / f"{name}.crt"
        out[f"{name}.key"] = d / f"{name}.key"
    return out


def kube_stored(api) -> set[tuple[str, str]]:
    """Every ServiceNameMapping on the API server, as (namespace, interface)."""
    status, listing = api.get("/apis/extensions.istio.io/v1alpha1/servicenamemappings")
    assert status == 200, listing
    return {(i["metadata"]["namespace"], i["spec"]["interfaceName"]) for i in listing["items"]}


def test_every_bypass_attempt_is_refused_in_every_policy(protos, apiserver, shims, tmp_path):
    rows: list[Row] = []

    # --- trust, with a token for every write ----------------------------------------------
    trust = Table(protos, rows, "trust", refusal=UNAUTHENTICATED, tmp=tmp_path)
    shim = shims("--namespace-policy=trust", f"--auth-token-file={trust.token_file}", "--auth-scope=all").wait_ready()
    anyone = Client(shim.target, "no credential")
    trust.opening(anyone, token=trust.token)
    for path in (REGISTER_A, REGISTER_B, PUSH):
        trust.row("no identity", anyone, path, FORGED_NS, want=UNAUTHENTICATED)
        trust.row("wrong token", anyone, path, FORGED_NS, want=UNAUTHENTICATED, token="trust-guess")
    new = trust.rotation(anyone, stale=[(anyone, REGISTER_A), (anyone, PUSH)])
    trust.ok("positive control (after)", anyone, REGISTER_B, token=new)
    trust_shim = shim

    # --- pod, on the real kube-apiserver ----------------------------------------------------
    make_pod(apiserver, "shop", "cart", POD_IP)
    pod_policy = Table(protos, rows, "pod", refusal=DENIED, tmp=tmp_path)
    shim = shims(
        "--namespace-policy=pod", "--on-mismatch=reject", "--push-namespace-policy=pod", f"--node-name={NODE}",
        f"--auth-token-file={pod_policy.token_file}", kubeconfig=apiserver.kubeconfig,
    ).wait_ready()
    pod = Client(shim.target, f"pod shop/cart at {POD_IP}", src=POD_IP)
    stranger = Client(shim.target, f"no pod at {NO_POD_IP}", src=NO_POD_IP)
    # The pod reflector may need a moment after the shim is ready.
    probe = register_request(protos, "shop", "cart", ["org.pod.Probe"]).SerializeToString()
    assert wait_until(lambda: pod.call(REGISTER_A, probe)[0] == OK, timeout=30), "the shim never attributed the pod"
    pod_policy.accepted.add(("shop", "org.pod.Probe"))
    pod_policy.opening(pod)
    for path in (REGISTER_A, REGISTER_B, PUSH):
        pod_policy.row("forged namespace", pod, path, FORGED_NS, want=DENIED)
        pod_policy.row("no identity", stranger, path, "shop", want=DENIED)
    for who in (pod, stranger):
        pod_policy.row("wrong token", who, PUSH, FORGED_NS, want=UNAUTHENTICATED, token="pod-guess")
    pod_policy.rotation(stranger, stale=[(pod, PUSH), (stranger, PUSH)])
    pod_policy.ok("positive control (after)", pod, REGISTER_B)
    pod_shim = shim

    # --- peer, mutual TLS -------------------------------------------------------------------
    certs = certificates(tmp_path / "certs")
    peer = Table(protos, rows, "peer", refusal=DENIED, tmp=tmp_path)
    shim = shims(
        f"--tls-cert={certs['server']}", f"--tls-key={certs['server.key']}", f"--tls-client-ca={certs['ca']}",
        "--namespace-policy=peer", "--on-mismatch=reject", f"--auth-token-file={peer.token_file}",
    ).wait_ready()

    def tls_client(name: str | None) -> Client:
        tls = {"ca": certs["ca"], **({"cert": certs[name], "key": certs[f"{name}.key"]} if name else {})}
        return Client(shim.target, f"certificate ns/{name}" if name else "TLS, no certificate", tls=tls)

    shop, payments, anonymous = tls_client("shop"), tls_client("payments"), tls_client(None)
    peer.opening(shop)
    for path in (REGISTER_A, REGISTER_B, PUSH):
        peer.row("forged namespace", shop, path, FORGED_NS, want=DENIED)
        peer.row("certificate of another namespace", payments, path, "shop", want=DENIED)
    for path in (REGISTER_A, REGISTER_B):
        peer.row("no identity", anonymous, path, "shop", want=DENIED)
    # PushMappings without a certificate needs the token.
    peer.row("no identity", anonymous, PUSH, "shop", want=UNAUTHENTICATED)
    peer.row("wrong token", anonymous, PUSH, FORGED_NS, want=UNAUTHENTICATED, token="peer-guess")
    peer.rotation(anonymous, stale=[(anonymous, PUSH)])
    peer.ok("positive control (after)", shop, REGISTER_B)
    peer_shim = shim

    # --- the table --------------------------------------------------------------------------
    # A poll of the rotation is refused until the shim has re-read the file: only its last
    # (accepted) try is a row of the table.
    polls = [r for r in rows if r.attempt == "rotation (poll)"]
    shown = [r for r in rows if r.attempt != "rotation (poll)" or r.got == OK]
    head = ("policy", "attempt", "path", "namespace", "client", "want", "got")
    widths = [max(len(h), *(len(getattr(r, h)) for r in shown)) for h in head]
    fmt = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    lines = [fmt(head) + " | message", "-+-".join("-" * w for w in widths) + "-+--------"]
    for r in shown:
        lines.append(fmt([getattr(r, h) for h in head]) + " | " + r.message[:100])
    lines.append(f"{len(shown)} rows; {len(polls)} calls polled for the rotated tokens; A, B: the registration paths")
    lines += [f"not applicable: {p} / {a}: {why}" for p, a, why in NOT_APPLICABLE]
    print("\n" + "\n".join(lines))

    wrong = [r for r in shown if r.got != r.want]
    assert not wrong, "\n".join(f"{r.policy} / {r.attempt} / {r.path} {r.namespace} ({r.client}): want {r.want}, got {r.got} {r.message}" for r in wrong)
    for r in shown:
        if r.attempt == "path variant":
            assert "is not the exact registration path" in r.message, r
    kinds = {(r.policy, r.attempt) for r in shown}
    for policy in ("trust", "pod", "peer"):
        for kind in ("query string", "path variant", "forged x-snp-ack header", "no identity", "wrong token",
                     "stale token after rotation", "positive control", "positive control (after)"):
            assert (policy, kind) in kinds, (policy, kind)
    assert {("pod", "forged namespace"), ("peer", "forged namespace"), ("peer", "certificate of another namespace")} <= kinds

    # --- the stores, after all rows: exactly the accepted calls -----------------------------
    # The refused calls were answered before the last accepted one, so once that one is
    # stored, anything of theirs would be too.
    for table, s in ((trust, trust_shim), (peer, peer_shim)):
        assert wait_until(lambda: table.accepted <= set(s.union_on_disk()), timeout=30), (table.policy, s.union_on_disk())
        assert set(s.union_on_disk()) == table.accepted, table.policy
    assert wait_until(lambda: pod_policy.accepted <= kube_stored(apiserver), timeout=30), kube_stored(apiserver)
    assert kube_stored(apiserver) == pod_policy.accepted
    assert pod_shim.alive()

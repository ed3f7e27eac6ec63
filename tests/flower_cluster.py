"""A real Flower deployment on localhost for tests: one SuperLink and one SuperNode per site,
each its own process (group), each SuperNode reading ONE site file through its node config;
optionally TLS with a self-signed CA made here."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fljax.deploy._app import flower_bin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it: ``(ca, cert,
    key)`` PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, issuer, key, signer, ca: bool, names=()):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fljax test CA")])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, True)
    server = cert(name, ca_name, key, ca_key, False,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    paths = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(server.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return paths


class Cluster:
    """A SuperLink and one SuperNode per node config (``site``, ``data-path``)."""

    def __init__(self, root: Path, node_configs: list[dict], tls: bool = False):
        self.root, self.procs, self.nodes = root, [], []
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ca = None
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                    f"{os.environ['PATH']}", "JAX_PLATFORMS": "cpu",
                    "JAX_COMPILATION_CACHE_DIR": str(Path(__file__).parent.parent / ".jax_cache"),
                    "FLWR_HOME": str(root / "superlink"), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1"}  # fmt: skip
        security = ["--insecure"]
        if tls:
            self.ca, certfile, keyfile = make_certificates(root / "certs")
            security = ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(certfile),
                        "--ssl-keyfile", str(keyfile)]  # fmt: skip
        self.procs.append(self._start("superlink", [
            flower_bin("flower-superlink"), *security, "--database", str(root / "link.db"),
            "--port", str(self.port), "--disable-runtime-dependency-installation"]))
        self._wait_listening()
        for cfg in node_configs:
            config = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                              for k, v in cfg.items())  # fmt: skip
            trust = ["--insecure"] if not tls else ["--root-certificates", str(self.ca)]
            proc = self._start(f"node{cfg['site']}", [
                flower_bin("flower-supernode"), *trust, "--superlink", self.address,
                "--port", str(free_port()), "--node-config", config],
                home=root / f"node{cfg['site']}")  # fmt: skip
            self.nodes.append(proc)
            self.procs.append(proc)

    def _start(self, name: str, cmd: list[str], home: Path | None = None):
        env = self.env if home is None else {**self.env, "FLWR_HOME": str(home)}
        log = (self.root / f"{name}.log").open("w")
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def _wait_listening(self, timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the SuperLink did not listen on {self.address}: "
                           f"{(self.root / 'superlink.log').read_text()[-2000:]}")

    def kill_node(self, i: int) -> None:
        """Kills SuperNode ``i`` and everything it started (SIGKILL: no goodbye)."""
        os.killpg(self.nodes[i].pid, signal.SIGKILL)

    def close(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

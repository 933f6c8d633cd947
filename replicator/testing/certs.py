"""A throw-away certificate authority for tests: real keys and certificates, made with the
openssl command line (always installed with the project's Debian packages), never mocked.

`TestCA(directory).issue("a")` makes node a's key and a certificate signed by the CA whose
subject CN and DNS subjectAltName are `a`; the mapping it returns is what `ReplicatorNode.tls`
(and the `[tls]` section) takes. `names=` puts other names in the certificate, to make one
that does not match the node that presents it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

CURVE = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
# What a strict (RFC 5280) verifier wants, and what README's "Certificates" tells operators.
CA_EXTENSIONS = ("-addext", "basicConstraints = critical, CA:TRUE",
                 "-addext", "keyUsage = critical, keyCertSign, cRLSign")
NODE_EXTENSIONS = ("basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature\n"
                   "extendedKeyUsage = serverAuth, clientAuth\n"
                   "subjectKeyIdentifier = hash\n"
                   "authorityKeyIdentifier = keyid, issuer\n")


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


class TestCA:
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, directory: Path, name: str = "test-ca", *,
                 extensions: Sequence[str] = CA_EXTENSIONS) -> None:
        """`extensions=()` makes a CA the way openssl's defaults do (no keyUsage), which a
        strict verifier refuses."""
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = directory / f"{name}.key", directory / f"{name}.crt"
        _openssl("req", "-x509", *CURVE, "-keyout", str(self.key), "-out", str(self.cert),
                 "-subj", f"/CN={name}", "-days", "2", *extensions)

    def issue(self, node_id: str, *, names: Sequence[str] | None = None) -> dict[str, Path]:
        """Key and certificate for `node_id` (CN and DNS SANs: `names`, default the id)."""
        names = list(names) if names is not None else [node_id]
        key, csr, crt = (self.directory / f"{node_id}.{ext}" for ext in ("key", "csr", "crt"))
        extensions = self.directory / f"{node_id}.ext"
        extensions.write_text("subjectAltName = " + ", ".join(f"DNS:{n}" for n in names) + "\n"
                              + NODE_EXTENSIONS)
        _openssl("req", *CURVE, "-keyout", str(key), "-out", str(csr), "-subj",
                 f"/CN={names[0]}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(extensions))
        key.chmod(0o600)
        return {"cert": crt, "key": key, "ca": self.cert}

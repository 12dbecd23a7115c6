"""Signatures over peer-list entries, made and checked by OpenSSH's `ssh-keygen -Y`.

No crypto library: the operator signs with an SSH key on the controller, every node
verifies against the operator's public key that the deploy installs (an allowed_signers
file). The namespace keeps these signatures from being valid for anything else.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from .errors import ReplimeshError

NAMESPACE = "replimesh-peers"
PRINCIPAL = "replimesh-operator"
SSH_KEYGEN = "ssh-keygen"


def allowed_signers(public_key: str, principal: str = PRINCIPAL,
                    namespace: str = NAMESPACE) -> str:
    """The allowed_signers line for a public key ("type base64 [comment]"), the
    operator's unless told."""
    kind, blob = public_key.split()[:2]
    return f'{principal} namespaces="{namespace}" {kind} {blob}\n'


def sign(private_key: str, data: bytes, namespace: str = NAMESPACE) -> str:
    """The armored signature of data by the key at private_key."""
    done = subprocess.run([SSH_KEYGEN, "-q", "-Y", "sign", "-f", private_key, "-n", namespace],
                          input=data, capture_output=True, check=False, timeout=60)
    if done.returncode != 0 or b"BEGIN SSH SIGNATURE" not in done.stdout:
        why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise ReplimeshError(f"cannot sign with {private_key}: {why}")
    return done.stdout.decode().strip()


def verify(signers_file: str, data: bytes, signature: str, principal: str = PRINCIPAL,
           namespace: str = NAMESPACE) -> bool:
    """Whether signature is principal's (the operator's unless told) over data, for
    namespace (False for anything else)."""
    if "BEGIN SSH SIGNATURE" not in signature:
        return False
    with tempfile.NamedTemporaryFile("w", suffix=".sig", delete=False) as sig:
        sig.write(signature + "\n")
    try:
        done = subprocess.run([SSH_KEYGEN, "-Y", "verify", "-f", signers_file, "-I", principal,
                               "-n", namespace, "-s", sig.name],
                              input=data, capture_output=True, check=False, timeout=60)
    finally:
        os.unlink(sig.name)
    return done.returncode == 0

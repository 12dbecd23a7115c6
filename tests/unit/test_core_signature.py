"""Signatures over peer-list entries, with the real ssh-keygen: what verifies and what not."""

import subprocess
import tempfile

import pytest

from plugins.module_utils.replimesh import signature
from plugins.module_utils.replimesh.errors import ReplimeshError

from .support import key

DATA = b'{"name":"node2","version":3}'


@pytest.fixture(scope="module")
def signed():
    return signature.sign(key()[0], DATA)


def test_a_signature_verifies_against_the_operator_key(signed):
    assert signed.startswith("-----BEGIN SSH SIGNATURE-----")
    assert signed.endswith("-----END SSH SIGNATURE-----")
    assert signature.verify(key()[1], DATA, signed) is True


def test_another_key_does_not_verify(signed):
    assert signature.verify(key("impostor")[1], DATA, signed) is False
    forged = signature.sign(key("impostor")[0], DATA)
    assert signature.verify(key()[1], DATA, forged) is False


@pytest.mark.parametrize("tampered", [DATA.replace(b"3", b"4"), DATA + b" ", b""])
def test_tampered_data_does_not_verify(signed, tampered):
    assert signature.verify(key()[1], tampered, signed) is False


def test_a_signature_in_another_namespace_does_not_verify(tmp_path):
    (tmp_path / "data").write_bytes(DATA)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", key()[0], "-n", "file",
                    str(tmp_path / "data")], check=True, capture_output=True)
    other = (tmp_path / "data.sig").read_text(encoding="utf-8").strip()
    assert signature.verify(key()[1], DATA, other) is False


def test_allowed_signers_restricts_the_key_to_the_namespace(tmp_path, signed):
    public = key()[0] + ".pub"
    with open(public, encoding="utf-8") as handle:
        line = handle.read()
    kind, blob = line.split()[:2]
    assert signature.allowed_signers(line) == \
        f'replimesh-operator namespaces="replimesh-peers" {kind} {blob}\n'
    # The same key allowed for another namespace only: refused.
    other = tmp_path / "allowed_signers"
    other.write_text(f'replimesh-operator namespaces="file" {kind} {blob}\n', encoding="utf-8")
    assert signature.verify(str(other), DATA, signed) is False


@pytest.mark.parametrize("garbage", [
    "",
    "sig",
    "-----BEGIN SSH SIGNATURE-----\nbm90IGEgc2lnbmF0dXJl\n-----END SSH SIGNATURE-----",
    "-----BEGIN SSH SIGNATURE-----",
])
def test_garbage_does_not_verify(garbage):
    assert signature.verify(key()[1], DATA, garbage) is False


def test_a_missing_signers_file_verifies_nothing(tmp_path, signed):
    assert signature.verify(str(tmp_path / "none"), DATA, signed) is False


def test_signing_with_a_missing_key_says_why(tmp_path):
    with pytest.raises(ReplimeshError, match=r"^cannot sign with .*/none: "):
        signature.sign(str(tmp_path / "none"), DATA)


def test_verify_leaves_no_temporary_file(tmp_path, monkeypatch, signed):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert signature.verify(key()[1], DATA, signed)
    assert list(tmp_path.iterdir()) == []

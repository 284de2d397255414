"""A trust folder (a mounted ConfigMap of keys) stands for every *.pub file in it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gwc.compiler.build.keys import generate_keypair
from gwc.runtime.bundle.envelope import key_id
from gwc.runtime.bundle.read import BundleError, trusted_keys


def test_a_folder_trusts_each_pub_file_in_it_and_nothing_else(tmp_path: Path) -> None:
    _, ci_pub, ci = generate_keypair(tmp_path / "keys" / "ci")
    _, next_pub, next_ = generate_keypair(tmp_path / "keys" / "ci-next")
    trust = tmp_path / "trust"
    (trust / "..2026_12_07").mkdir(parents=True)  # as the kubelet lays out a mounted ConfigMap
    shutil.copy(ci_pub, trust / "ci.pub")
    shutil.copy(next_pub, trust / "ci-next.pub")
    _, other_pub, _ = generate_keypair(tmp_path / "other")
    shutil.copy(other_pub, trust / "other.pem")  # not *.pub: not trusted
    (trust / "README").write_text("the CI keys")
    keys = trusted_keys([str(trust)])
    assert set(keys) == {key_id(ci.public_key()), key_id(next_.public_key())}
    # files and folders mix
    assert len(trusted_keys([str(trust), str(other_pub)])) == 3


def test_a_folder_without_keys_or_with_a_bad_one_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"is a folder with no \*\.pub key file"):
        trusted_keys([str(tmp_path / "empty")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ci.pub").write_text("not a key")
    with pytest.raises(BundleError, match=r"ci\.pub is not a PEM public key"):
        trusted_keys([str(tmp_path / "bad")])

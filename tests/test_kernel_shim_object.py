"""Finding the BPF object and the reasons KernelShim.open gives when it
cannot load one (no kernel privileges needed)."""

from __future__ import annotations

import os

import pytest

from xend_vnet.kernel_shim.datapath.kernel import build
from xend_vnet.kernel_shim.datapath.kernel.shim import (
    KernelPathUnavailable, KernelShim, ShimConfig, find_object)


def test_object_lives_in_the_package():
    assert build.object_path().endswith(os.path.join("kernel", "bpf", "vnet_shim.bpf.o"))
    assert os.path.isfile(build.SOURCE)


def test_missing_object(tmp_path):
    missing = str(tmp_path / "nothing.o")
    with pytest.raises(KernelPathUnavailable) as e:
        find_object(missing)
    assert e.value.reason.startswith("no compiled object: ")
    with pytest.raises(KernelPathUnavailable) as e:
        KernelShim.open(ShimConfig("lo", "192.0.2.1"), object_path=missing)
    assert e.value.reason.startswith("no compiled object: ")
    assert "\n" not in e.value.reason


def test_not_an_object(tmp_path):
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"this is not an ELF file\n" * 10)
    with pytest.raises(KernelPathUnavailable) as e:
        KernelShim.open(ShimConfig("lo", "192.0.2.1"), object_path=str(bad))
    assert e.value.reason.startswith(("cannot open object", "libbpf missing"))
    assert "\n" not in e.value.reason


def test_bad_config(tmp_path):
    obj = tmp_path / "x.o"
    obj.write_bytes(b"\0")
    with pytest.raises(KernelPathUnavailable) as e:
        KernelShim.open(ShimConfig("lo", "not-an-address"), object_path=str(obj))
    assert "care-of" in e.value.reason


def test_missing_underlay(tmp_path):
    obj = tmp_path / "x.o"
    obj.write_bytes(b"\0")
    with pytest.raises(KernelPathUnavailable) as e:
        KernelShim.open(ShimConfig("nosuchdev0", "192.0.2.1"), object_path=str(obj))
    assert e.value.reason.startswith(("no underlay device nosuchdev0", "libbpf missing"))


def test_compile_without_clang_says_why(tmp_path):
    ok, why = build.compile_object(str(tmp_path / "o.o"), clang=str(tmp_path / "no-clang"))
    assert not ok and "no-clang" in why
    assert not os.path.exists(tmp_path / "o.o")


def test_compile_error_says_why(tmp_path):
    src = tmp_path / "broken.bpf.c"
    src.write_text("this is not C\n")
    if not build.shutil.which("clang"):
        pytest.skip("clang not installed")
    ok, why = build.compile_object(str(tmp_path / "o.o"), source=str(src))
    assert not ok and why.startswith("clang failed")
    assert not os.path.exists(tmp_path / "o.o")

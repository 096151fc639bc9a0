"""Compiling the BPF object, and finding it at run time.

The package build (setup.py's build_py, for ``pip install .`` and ``pip
install -e .``) and ``make setup`` run ``compile_object``; it needs clang
and the kernel's uapi headers (Debian: clang, linux-libc-dev, libbpf-dev)
and leaves no object when they are missing, which the engine reports as
``no compiled object`` and runs without the kernel path.  This module
imports nothing from the package, so setup.py can load it from the source
tree before the package is installed.

    python3 -m xend_vnet.kernel_shim.datapath.kernel.build [OUTPUT]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "bpf", "vnet_shim.bpf.c")
OBJECT_NAME = "vnet_shim.bpf.o"
DEFAULT_OBJECT = os.path.join(HERE, "bpf", OBJECT_NAME)


def object_path() -> str:
    """Where the package keeps its compiled object (it may be missing)."""
    return DEFAULT_OBJECT


def multiarch_include() -> list[str]:
    """The directory with asm/ headers on Debian-like systems (``gcc
    -print-multiarch``), when there is one."""
    for cc in ("gcc", "cc"):
        if shutil.which(cc):
            p = subprocess.run([cc, "-print-multiarch"], capture_output=True, text=True,
                               check=False)
            arch = p.stdout.strip()
            if p.returncode == 0 and arch and os.path.isdir(f"/usr/include/{arch}"):
                return [f"-I/usr/include/{arch}"]
    return []


def compile_object(output: str = DEFAULT_OBJECT, source: str = SOURCE,
                   clang: str | None = None) -> tuple[bool, str]:
    """Compile ``source`` to ``output``: (True, path) or (False, why not).

    Never raises for a missing toolchain: the product runs without it."""
    clang = clang or os.environ.get("XEND_VNET_CLANG") or shutil.which("clang")
    if not clang:
        return False, "clang not found"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    cmd = [clang, "-O2", "-g", "-Wall", "-target", "bpf", *multiarch_include(),
           "-I" + os.path.dirname(source), "-c", source, "-o", tmp]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{clang}: {e}"
    if p.returncode != 0:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        lines = (p.stderr or p.stdout).strip().splitlines()
        return False, f"clang failed: {lines[-1] if lines else p.returncode}"
    os.replace(tmp, output)
    return True, output


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ok, what = compile_object(args[0] if args else DEFAULT_OBJECT)
    print(("compiled " if ok else "not compiled: ") + what,
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

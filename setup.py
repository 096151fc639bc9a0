"""Build hook: compile the kernel data path's BPF object into the package.

Everything else about the package is in setup.cfg.  ``build_py`` (run by
``pip install .`` and, with editable_mode set, by ``pip install -e .``)
compiles xend_vnet/kernel_shim/datapath/kernel/bpf/vnet_shim.bpf.c with
clang; for an editable install the object lands in the source tree, where
the package looks for it.  Without clang the install goes on and the engine
reports the kernel path as unavailable ("no compiled object").
"""

import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = os.path.join("xend_vnet", "kernel_shim", "datapath", "kernel")
OBJECT = os.path.join(KERNEL, "bpf", "vnet_shim.bpf.o")


def _builder():
    spec = importlib.util.spec_from_file_location(
        "_xend_vnet_bpf_build", os.path.join(HERE, KERNEL, "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithBpf(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            target = os.path.join(HERE, OBJECT)
        else:
            target = os.path.join(self.build_lib, OBJECT)
        ok, what = _builder().compile_object(target)
        print(("compiled BPF object " if ok else
               "kernel data path not built (the engine runs without it): ") + what)


setup(cmdclass={"build_py": BuildPyWithBpf})

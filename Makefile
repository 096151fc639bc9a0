# Set-up and entry points.  `make demo` and `make test`, as root, work on a
# fresh Debian-like machine: they install what they need first.
PYTHON ?= python3
APT_PACKAGES = iproute2 iputils-ping iperf3 tcpdump procps ethtool frr clang llvm libbpf-dev linux-libc-dev libbpf1
PYTEST_ARGS ?=

.PHONY: setup bpf demo test bench lint

setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	$(PYTHON) -m pip install -q -e '.[test]'
	$(MAKE) bpf

# The kernel data path's object (setup.py's build_py also makes it); without
# clang the engine runs on its user-space path and says why.
bpf:
	-$(PYTHON) -m xend_vnet.kernel_shim.datapath.kernel.build

demo: setup
	bash demo/run-demo.sh

# Every end-to-end test runs, and every engine they start carries its clear
# vnets in the kernel path or fails (XEND_VNET_REQUIRE_KERNEL_PATH, design.md 1.1).
test: setup
	XEND_VNET_REQUIRE_E2E=1 XEND_VNET_REQUIRE_KERNEL_PATH=1 $(PYTHON) -m pytest -q -rfEs $(PYTEST_ARGS)

bench: setup
	$(PYTHON) benchmarks/throughput.py

lint:
	ruff check xend_vnet tests benchmarks conftest.py

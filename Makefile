# Set-up and entry points.  `make demo` and `make test`, as root, work on a
# fresh Debian-like machine: they install what they need first.
PYTHON ?= python3
APT_PACKAGES = iproute2 iputils-ping iperf3 tcpdump procps frr
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint

setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	$(PYTHON) -m pip install -q -e '.[test]'

demo: setup
	bash demo/run-demo.sh

test: setup
	XEND_VNET_REQUIRE_E2E=1 $(PYTHON) -m pytest -q -rfEs $(PYTEST_ARGS)

bench: setup
	$(PYTHON) benchmarks/throughput.py

lint:
	ruff check xend_vnet tests benchmarks conftest.py

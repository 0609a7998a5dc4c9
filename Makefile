# The two commands (see README.md): `make up` runs the enclave, `make test` runs the tests.
# Both do all set-up on a fresh machine: system packages (as root), the venv, the package.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: up test setup system bench clean

up: setup
	$(VENV)/bin/enclave up

test: setup
	scripts/test.sh

setup: system $(STAMP)
	@scripts/fetch-gpt2-bpe.sh

system:
	@scripts/system-packages.sh

$(STAMP): pyproject.toml scripts/setup-venv.sh
	scripts/setup-venv.sh
	@touch $@

clean:
	rm -rf $(VENV) var .pytest_cache

# fusesnap — the two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ROOT ?=
SOCKET ?=
PYTEST_ARGS ?=

.PHONY: setup run test lint proto clean bench-content

setup:
	./vagrant/provision.sh

run: setup
	$(VENV)/bin/fusesnap serve $(if $(ROOT),--root $(ROOT)) $(if $(SOCKET),--socket $(SOCKET))

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check fusesnap tests
	$(VENV)/bin/mypy fusesnap

# Benchmarks print figures beside their anchors; they are not tests.
bench-content: setup
	$(PY) bench/content.py --json results/content.json

# Generated protobuf code is committed (fusesnap/pb/); tests/test_proto_generated.py checks it is current.
proto: setup
	$(PY) -m fusesnap.pb.generate

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

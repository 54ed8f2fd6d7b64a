# fusesnap — the two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ROOT ?=
SOCKET ?=
PYTEST_ARGS ?=
# `make test` passes --with-vagrant to vagrant/provision.sh, so the suite validates
# vagrant/Vagrantfile wherever it runs, CI included; `make run` needs no vagrant, and
# neither does the VM (its suite runs with WITH_VAGRANT=0).
WITH_VAGRANT ?= 1

.PHONY: setup run link install-service test lint proto clean bench bench-content bench-images bench-pull \
        vagrant-test

# The one set-up path: `make run`, `make test`, .ci/run and the VM all go through it.
# `make setup` and `make test` install everything the suites and benchmarks need;
# `make run` and `make install-service` only what the daemon needs (--run).
setup:
	FUSESNAP_VENV=$(abspath $(VENV)) ./vagrant/provision.sh $(PROVISION_FLAGS)

# --link: `fusesnap` into ~/.local/bin, so that the README's commands work in a new shell.
run: PROVISION_FLAGS += --run --link
run: setup
	$(VENV)/bin/fusesnap serve $(if $(ROOT),--root $(ROOT)) $(if $(SOCKET),--socket $(SOCKET))

link: PROVISION_FLAGS += --run --link
link: setup

# A systemd unit (as root the system's, otherwise the user's) that runs this
# checkout's fusesnap: systemd/install-service.sh says the systemctl line to enable it.
install-service: PROVISION_FLAGS += --run
install-service: setup
	FUSESNAP_VENV=$(abspath $(VENV)) ./systemd/install-service.sh

test: PROVISION_FLAGS += $(if $(filter 1,$(WITH_VAGRANT)),--with-vagrant)
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check fusesnap tests
	$(VENV)/bin/mypy fusesnap

# Benchmarks print figures beside their anchors; they are not tests.
bench-content: setup
	$(PY) bench/content.py --reps 5 --json results/content.json

bench-images: setup
	$(PY) bench/images.py --json results/images.json

# Registry pulls (issue 20): fusesnap, ctr pull (native), skopeo+umoci; lazy pulls.
bench-pull: setup
	$(PY) bench/pull.py --images rich,random --lazy --cri --json results/pull.json

# The filesystem benchmark of issue 6: native, overlayfs, fuse-overlayfs and
# fusesnap side by side (as root: it mounts overlayfs and drops caches).
bench: setup
	$(PY) bench/fs.py --json results/fs.json

# Generated protobuf code is committed (fusesnap/pb/); tests/test_proto_generated.py checks it is current.
proto: setup
	$(PY) -m fusesnap.pb.generate

# The suite in a disposable Debian 12 VM (vagrant/Vagrantfile): `make test` as the
# `vagrant` user (what runs unprivileged), then as root (everything, containerd
# included). JUnit XML, and the benchmarks' JSON with BENCH=1, land in results/vagrant/;
# the VM is destroyed unless KEEP=1. The host needs vagrant, a provider and rsync, not
# FUSE or containerd, so this target does not depend on setup.
KEEP ?=
BENCH ?=
# Benchmark targets run in the VM, as root after the suites, when BENCH=1.
VM_BENCH ?= bench-content
VM_RESULTS := results/vagrant
VAGRANT := VAGRANT_CWD=$(CURDIR)/vagrant vagrant

# PYTEST_ARGS crosses the ssh command line base64-encoded, whatever quotes it holds.
# `up --no-provision; rsync; provision` also refreshes a VM that KEEP=1 left running.
# The results come back as a tar stream: `-- -T` keeps ssh from allocating a terminal,
# which would mangle it (vagrant's own --no-tty is taken as a global option).
vagrant-test: export VM_PYTEST_ARGS = $(PYTEST_ARGS)
vagrant-test:
	@command -v vagrant >/dev/null || { echo "make vagrant-test needs vagrant and a provider" \
	    "(libvirt or VirtualBox) on this machine: see the README, Testing in a VM" >&2; exit 1; }
	rm -rf $(VM_RESULTS) && mkdir -p $(VM_RESULTS)
	@args=$$(printf '%s' "$$VM_PYTEST_ARGS" | base64 | tr -d '\n'); \
	suite() { $(VAGRANT) ssh -c "cd /vagrant && $$1 make test WITH_VAGRANT=0 \
	    PYTEST_ARGS=\"\$$(echo '$$args' | base64 -d) --junitxml=results/junit-$$2.xml\""; }; \
	status=0; \
	if $(VAGRANT) up --no-provision && $(VAGRANT) rsync && $(VAGRANT) provision \
	        && $(VAGRANT) ssh -c 'sudo rm -rf /vagrant/results'; then \
	    suite '' vagrant || status=1; \
	    suite sudo root || status=1; \
	    $(if $(filter 1,$(BENCH)),$(VAGRANT) ssh -c 'cd /vagrant && sudo make $(VM_BENCH)' || status=1;) \
	    $(VAGRANT) ssh -c 'tar -C /vagrant/results -cf - .' -- -T \
	        | tar -C $(VM_RESULTS) -xf - || status=1; \
	else status=1; fi; \
	$(if $(filter 1,$(KEEP)),echo "KEEP=1: the VM stays (cd vagrant && vagrant ssh; vagrant destroy -f)";,$(VAGRANT) destroy -f || status=1;) \
	echo "results in $(VM_RESULTS)/:" && ls $(VM_RESULTS); exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

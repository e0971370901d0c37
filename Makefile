# Entry points: `make lab` (the main job on lab hosts) and `make test` (everything CI runs).
SHELL := /bin/bash
.SHELLFLAGS := -o errexit -o nounset -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# The lab: its name (several labs can run side by side; the integration suite runs this same
# target under another name), its hosts and their simulated GPU profiles (scripts/lab --help).
export LAB_NAME ?= lab
LAB_HOSTS ?= 3
LAB_GPUS ?= --gpu $(LAB_NAME)1=4x-A100-40GB --gpu $(LAB_NAME)2=8x-H100-80GB --gpu $(LAB_NAME)3=none

.PHONY: help deps venv wheel lab lab-timing lab-down lint unit integration test constraints

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: ## Install the host packages the lab and the venv need (apt, as root)
	@python3 -c 'import ensurepip' 2>/dev/null || { apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y python3-venv; }
	scripts/lab deps

venv: $(VENV)/.installed ## Create the pinned controller toolchain in .venv

# requirements.lock: every pin of requirements.txt and constraints.txt with the sha256 of its files
# (scripts/lock_host_venv.py controller); pip refuses any file whose hash is not in it.
$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --editable .
	touch $@

# The wheel of the llm_toolkit package the roles install on hosts, with its sha256 (dist/llm-toolkit.json).
WHEEL_RECORD := dist/llm-toolkit.json
WHEEL_SOURCES := pyproject.toml VERSION $(shell find src plugins/module_utils -name '*.py' -o -name '*.yml' 2>/dev/null)

wheel: $(WHEEL_RECORD) ## Build the llm_toolkit wheel for the hosts and record its sha256

$(WHEEL_RECORD): $(VENV)/.installed scripts/build_wheel.py $(WHEEL_SOURCES)
	$(VENV)/bin/python scripts/build_wheel.py

lab: deps venv wheel ## Boot lab hosts, converge them with playbooks/site.yml, verify them, print a summary
	scripts/lab up $(LAB_HOSTS) $(LAB_GPUS)
	LAB_MODEL_DIR=$$(python tests/models/tiny_model_cache.py) python -m tests.standins.ollama.depot lab -- \
		ansible-playbook -i "$$(dirname "$$(scripts/lab inventory)")" playbooks/site.yml
	scripts/lab status
	@echo "lab is up; converge again: make lab; tear down: make lab-down"

lab-timing: venv wheel ## Time a no-op converge of the running lab: each host alone, then all hosts
	LAB_MODEL_DIR=$$(python tests/models/tiny_model_cache.py) python -m tests.standins.ollama.depot lab -- \
		python scripts/converge_timing.py --inventory "$$(dirname "$$(scripts/lab inventory)")"

lab-down: ## Stop the lab hosts and remove everything the lab left on this machine
	scripts/lab down

lint: venv ## yamllint, ruff, ansible-lint (production profile) and a syntax check
	yamllint --strict .
	ruff check .
	ruff format --check .
	ansible-lint --offline
	ansible-playbook playbooks/site.yml --syntax-check

unit: venv ## Unit tests (no lab needed)
	pytest tests/unit

integration: deps venv wheel ## Integration tests: real playbooks on lab hosts
	pytest tests/integration

# make test runs two pytest processes side by side (the session lab's tests wait on services much of
# the time, and the machine has two cores): the modules on the session lab, in order; and beside them
# the unit tests and the modules that boot labs of their own, or none, whose report follows.
BESIDE_SESSION_LAB := tests/unit $(addprefix tests/integration/,test_fleet.py test_lab_features.py \
	test_lab_lifecycle.py test_secrets.py test_tiny_model.py test_vllm.py test_vllm_version.py)
BESIDE_LOG := .test-beside-the-session-lab.log

test: deps venv wheel lint ## Everything CI runs: lint, unit and integration tests
	pytest --durations=15 $(BESIDE_SESSION_LAB) > $(BESIDE_LOG) 2>&1 & beside=$$!; \
	pytest --durations=25 tests/integration $(addprefix --ignore=,$(filter tests/integration/%,$(BESIDE_SESSION_LAB))) \
		&& session=0 || session=$$?; \
	wait $$beside && other=0 || other=$$?; \
	echo "=== beside the session lab: $(BESIDE_SESSION_LAB)"; cat $(BESIDE_LOG); \
	echo "=== exit status: session lab $$session, beside it $$other"; \
	exit $$(( session > other ? session : other ))

constraints: ## Re-pin every package of the venv after changing requirements.txt, and re-lock it
	rm -rf $(VENV) && python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	{ echo '# Every package of the controller venv at an exact version (make constraints rewrites it).'; \
	  $(VENV)/bin/pip freeze --exclude-editable; } > constraints.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation --editable .
	$(VENV)/bin/python scripts/lock_host_venv.py controller helper
	touch $(VENV)/.installed

# plantd front door: `make run`, `make test`, `make lint`, `make bench`.
# Each target creates the virtual environment it needs in .venv.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= etc/plantd.ini
TRIAL_JOBS ?= 2

.PHONY: run test trial lint bench fuzz soak check-config sim clean

$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# twistd finds plugins in twisted/plugins/ directories on sys.path: put
	@# this source tree there (the editable install's import hook does not).
	$(BIN)/python -c 'import os, sysconfig; open(os.path.join(sysconfig.get_paths()["purelib"], "plantd-source.pth"), "w").write(os.getcwd() + "\n")'
	@# Write twisted/plugins/dropin.cache now, so that the daemon, run by a
	@# user who cannot write here, logs no "Unable to write to plugin cache".
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $(STAMP)

## run: the daemon with the default config, beside the device simulators, in the foreground
run: $(STAMP)
	@mkdir -p var/state var/printer
	@$(BIN)/twistd --pidfile= -n plantd-sim demo --jobs-dir var/printer & sim=$$!; \
	  trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/twistd --pidfile= -n plantd --config $(CONFIG); status=$$?; \
	  case $$status in 130|143) exit 0;; *) exit $$status;; esac

## check-config: validate CONFIG and print one line per trigger and action
check-config: $(STAMP)
	$(BIN)/twistd --pidfile= -n plantd --config $(CONFIG) --check-config

## test: unit and end-to-end tests, then lint and type checks
test: trial lint

trial: $(STAMP)
	@# systemd-analyze rates etc/plantd.service (tests/test_unit_files.py);
	@# headless chromium shows the status page (tests/status/test_page_browser.py);
	@# promtool checks etc/plantd-alerts.yml (tests/status/test_alerts.py).
	@# mosquitto is the MQTT broker of tests/mqtt (tests/mqtt/broker.py).
	@for need in systemd-analyze:systemd chromium:chromium promtool:prometheus mosquitto:mosquitto; do \
	  cmd=$${need%%:*}; pkg=$${need#*:}; \
	  command -v $$cmd >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y --no-install-recommends $$pkg >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y --no-install-recommends $$pkg >/dev/null 2>&1; }; }; } || \
	  { echo "make test: cannot install $$cmd here: install Debian's $$pkg package, then run make test again"; exit 1; }; \
	done
	$(BIN)/python -m twisted.trial --jobs=$(TRIAL_JOBS) tests

lint: $(STAMP)
	$(BIN)/ruff check daemon tests twisted bench fuzz soak
	$(BIN)/ruff format --check daemon tests twisted bench fuzz soak
	$(BIN)/mypy

## bench: plantd beside bare Twisted and asyncio (prints a table of figures and
## ratios, writes bench/results/*.json; never a pass/fail test). QUICK=1: one
## short round; BENCH_ARGS: more options (python -m bench.run --help)
bench: $(STAMP) bench/build/loadgen
	$(BIN)/python -m bench.run $(if $(QUICK),--quick) $(BENCH_ARGS)

## fuzz: the parser properties with FUZZ_EXAMPLES examples each (default 2000),
## then FUZZ_SECONDS (default 90) of random bytes at a real daemon's listeners,
## status page and reader trigger; exits 1 on a violation (FUZZ_SEED replays)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m fuzz.run

## soak: the daemon under steady mixed load for SOAK_SECONDS (default 600),
## the printer away every minute; prints the figures, exits 1 only when an
## acknowledged line was never printed or RSS/fds leaked
soak: $(STAMP)
	$(BIN)/python -m soak.run

bench/build/loadgen: bench/loadgen.c
	@mkdir -p bench/build
	$(CC) -O2 -Wall -o $@ bench/loadgen.c

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info twisted/plugins/dropin.cache

# Every target sets itself up from nothing: a venv, the package, and what the tests need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test test-fast test-plain-send lint bench bench-fanout bench-abuse test-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)
	@scripts/ensure-node.sh
	@scripts/ensure-bwrap.sh

run: setup
	$(BIN)/realtime serve --host $(HOST) --port $(PORT)

test-deps: setup
	@scripts/ensure-redis.sh
	@scripts/ensure-chromium.sh

test: lint test-deps
	$(BIN)/pytest
	$(MAKE) test-plain-send

# The websocket suites again with the frame-once fast path off (plain ASGI `send`).
test-plain-send: test-deps
	QAI_TEST_WS_FAST_PATH=0 $(BIN)/pytest -m "not slow" tests/test_websocket.py tests/test_fast_path.py \
		tests/test_socket_abuse.py tests/test_shutdown.py tests/test_revocation.py tests/test_idle_socket.py

test-fast: test-deps
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/lifecycle.py

bench-fanout: test-deps
	$(BIN)/python benchmarks/fanout.py

bench-abuse: setup
	@scripts/ensure-node.sh
	$(BIN)/python benchmarks/abuse.py

clean:
	rm -rf $(VENV) .workspaces .pytest_cache

# The two commands of the quick start, and a few more.
.PHONY: serve test lint docs screenshot bench

serve:  ## run the example chat on http://127.0.0.1:6001 (memory broker); installs only that
	@scripts/bootstrap.sh serve
	.venv/bin/python examples/chat/server.py

test:   ## the whole test suite (installs the test toolchain)
	@scripts/test.sh

lint:   ## ruff and mypy
	@scripts/bootstrap.sh test
	.venv/bin/ruff check .
	.venv/bin/mypy

docs:   ## the API reference from the docstrings (pdoc) into build/api/; warnings fail it
	@scripts/bootstrap.sh test
	scripts/api_docs.sh build/api

screenshot:  ## regenerate docs/chat.png, the README's picture (the chat in chromium)
	@scripts/bootstrap.sh test
	CHAT_SCREENSHOT="$(CURDIR)/docs/chat.png" tests/js/run.sh --test-name-pattern='two users'

bench:  ## benchmarks against peers; writes docs/benchmarks.md
	bench/run.sh

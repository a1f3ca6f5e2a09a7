# The two commands of the quick start, and a few more.
.PHONY: serve test lint bench

serve:  ## run the example chat on http://127.0.0.1:6001 (memory broker)
	@scripts/bootstrap.sh
	.venv/bin/python examples/chat/server.py

test:   ## the whole test suite
	@scripts/test.sh

lint:   ## ruff and mypy
	@scripts/bootstrap.sh
	.venv/bin/ruff check .
	.venv/bin/mypy

bench:  ## benchmarks against peers; writes docs/benchmarks.md
	bench/run.sh

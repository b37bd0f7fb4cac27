# The two commands of the README: `make start` and `make test`.
.PHONY: start test install train eval

install:
	@scripts/bootstrap.sh

start: install
	.venv/bin/jisr start

train: install
	.venv/bin/jisr train

test: install
	.venv/bin/jisr train
	.venv/bin/python -m pytest $(PYTEST_ARGS)

eval: install
	.venv/bin/jisr eval

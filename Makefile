# The two commands of README.md: `make lab` (set-up + the main job) and `make test` (set-up + every test).
.PHONY: lab test golden install-lab install-test

lab: install-lab
	bash scripts/lab.sh

test: install-test
	bash scripts/test.sh

golden: install-test
	bash -c 'source target/olive-env.sh && "$$OLIVE_TEST_VENV/bin/python" tests/golden/gen_golden.py'

install-lab:
	bash scripts/install.sh lab

install-test:
	bash scripts/install.sh test

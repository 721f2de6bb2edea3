# The two set-up commands: `make demo` and `make test`. Both install what they need first.

.PHONY: all setup test demo demo-stop bench

all: test

setup:
	scripts/setup.sh

test:
	scripts/test.sh

demo:
	scripts/demo.sh

demo-stop:
	scripts/cluster.sh stop $(CURDIR)/.demo

bench:
	scripts/bench.sh

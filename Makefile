# The two set-up commands: `make demo` and `make test`. Both install what they need first.

.PHONY: all setup test demo demo-stop bench lint scenario it upgrade-script upgrade-check soak

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

# make test with the hostile-clients soak running 3 minutes instead of 30 seconds
soak:
	CONVEYOR_SOAK_SECS=180 scripts/test.sh

# rustfmt, clippy -D warnings, bash -n on the scripts, the upgrade script current; make test runs it first
lint:
	scripts/lint.sh

# write sql/pg_conveyor--A--B.sql from sql/migrations/A--B.sql and sql/functions/ (docs/upgrading.md)
upgrade-script:
	scripts/upgrade-script.sh

# ALTER EXTENSION pg_conveyor UPDATE from 0.1.0, on a private copy of PostgreSQL (make test runs it)
upgrade-check:
	scripts/upgrade-check.sh

# make scenario NAME=lifecycle (NAME="a b": several; none: all): reinstall into the dev cluster, run pgrx-tests/sql/NAME.sql
scenario:
	scripts/dev.sh $(NAME)

# make it NAME=lifecycle::a_stale_lease: reinstall into the dev cluster, run the integration tests matching NAME
it:
	scripts/dev.sh --it $(NAME)

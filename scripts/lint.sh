#!/usr/bin/env bash
# make lint (and the first step of make test): rustfmt, clippy with -D warnings, bash -n on the
# shell scripts, and a check that the generated upgrade and router install scripts are current. Needs what
# scripts/setup.sh installs (pgrx's config for pg15: clippy builds pgrx-pg-sys). Warm, it takes
# seconds: clippy keeps its own fingerprints in target/, beside the other builds'.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '=== lint: %s\n' "$*"; }

step "rustfmt (rustfmt.toml)"
cargo fmt --all -- --check
rustfmt --check src/pg_tests.rs # include!d into lib.rs, so cargo fmt does not reach it
(cd examples/rust && cargo fmt -- --check)
(cd clients/rust && cargo fmt -- --check)

step "clippy -D warnings (levels in Cargo.toml [lints])"
cargo clippy --locked --quiet --all-targets --features "pg15 pg_test integration" -- -D warnings
# examples/e2e.sh builds the example in examples/rust/target: share it
CARGO_TARGET_DIR=examples/rust/target \
    cargo clippy --locked --quiet --all-targets --manifest-path examples/rust/Cargo.toml -- -D warnings
CARGO_TARGET_DIR=examples/rust/target \
    cargo clippy --locked --quiet --all-targets --manifest-path clients/rust/Cargo.toml -- -D warnings

step "bash -n"
shopt -s nullglob
for f in scripts/*.sh examples/*.sh examples/*/*.sh examples/*/test/*.sh bench/*/*.sh; do
    bash -n "$f"
done

step "upgrade script"
scripts/upgrade-script.sh --check

step "router install script (scripts/router-script.sh)"
scripts/router-script.sh --check

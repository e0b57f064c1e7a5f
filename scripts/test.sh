#!/usr/bin/env bash
# The test command. First it checks what only an administrator can provide and stops at
# once, naming what is missing and how to get it; then it installs, under target/, every
# tool a developer can install without root; then it runs every test suite, builds the
# book and checks its links, and documents the crates with warnings as errors.
#
# Set TEST_SKIP_SETUP=1 to skip the checks and installs on a machine that has
# passed them once (the cargo steps still run). Not EVHOST_*: the host reads every such
# variable as a configuration key, and the configuration tests would refuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_COMPONENT_VERSION=0.21.1
MDBOOK_VERSION=0.5.4
LINKCHECKER_VERSION=10.6.0
tools=$PWD/target/tools

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# What needs root: each missing piece is named with the command that provides it, all at
# once, before anything is built.
check_system() {
    local missing=()
    command -v rustup >/dev/null || missing+=("rustup: install it from https://rustup.rs")
    command -v cc >/dev/null || missing+=("a C compiler (for SQLite and ring): apt-get install gcc")
    command -v curl >/dev/null || missing+=("curl (the quick start uses it): apt-get install curl")
    if ! command -v nats-server >/dev/null; then
        missing+=("nats-server 2.9 or newer (the NATS tests start their own): apt-get install nats-server")
    fi
    if ! command -v python3 >/dev/null; then
        missing+=("python3 with venv (componentize-py, the link checker): apt-get install python3 python3-venv")
    elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        missing+=("python3's venv with pip (componentize-py, the link checker): apt-get install python3-venv")
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        missing+=("node 20 or newer with npm (componentize-js): apt-get install nodejs npm, or from https://nodejs.org")
    elif [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
        missing+=("node 20 or newer (componentize-js); this is node $(node --version)")
    fi
    local chromium=${UI_CHROMIUM:-/usr/bin/chromium}
    if [ ! -x "$chromium" ]; then
        missing+=("Chromium at $chromium (the web UI's browser tests): apt-get install chromium, or set UI_CHROMIUM")
    fi
    # The outbox relay's tests: PostgreSQL with a database `test` the user `postgres`
    # reaches without a password (or the server TEST_POSTGRES_URL names).
    local postgres=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
    if ! command -v psql >/dev/null; then
        missing+=("psql, to check PostgreSQL for the outbox tests: apt-get install postgresql-client")
    elif ! psql "$postgres" -w -qAtc 'select 1' >/dev/null 2>&1; then
        missing+=("PostgreSQL at $postgres without a password (the outbox tests): apt-get install postgresql; start it (pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start); trust authentication for 127.0.0.1 in pg_hba.conf; createdb -U postgres test. Or set TEST_POSTGRES_URL to a server of yours")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        printf 'scripts/test.sh: this machine lacks what the tests need:\n' >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

# What a developer can install without root, pinned, under target/ (each only once).
install_tools() {
    rustup target add wasm32-wasip2 wasm32-wasip1
    if [ ! -x "target/cargo-component-$CARGO_COMPONENT_VERSION/bin/cargo-component" ]; then
        step "Installing cargo-component $CARGO_COMPONENT_VERSION (once; a test builds an example with it)"
        cargo install cargo-component --version "$CARGO_COMPONENT_VERSION" --locked \
            --root "target/cargo-component-$CARGO_COMPONENT_VERSION"
    fi
    if [ "$("$tools/bin/mdbook" --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]; then
        step "Installing mdbook $MDBOOK_VERSION (once)"
        cargo install mdbook --version "$MDBOOK_VERSION" --locked --no-default-features \
            --features search --root "$tools"
    fi
    local venv=$tools/linkchecker-$LINKCHECKER_VERSION
    if [ ! -x "$venv/bin/linkchecker" ]; then
        step "Installing LinkChecker $LINKCHECKER_VERSION (once)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "LinkChecker==$LINKCHECKER_VERSION"
    fi
    # componentize-py and componentize-js are installed by tests/build.rs, pinned, the
    # first time the tests are built.
}

# Builds the book and fails on a broken link between its pages or to an anchor.
check_book() {
    # mdbook reports a missing include as an error and still succeeds: its output decides.
    local log
    log=$("$tools/bin/mdbook" build docs 2>&1) || { printf '%s\n' "$log" >&2; return 1; }
    printf '%s\n' "$log"
    if grep -qE 'ERROR|WARN' <<<"$log"; then
        printf 'scripts/test.sh: the book built with errors or warnings (above)\n' >&2
        return 1
    fi
    # LinkChecker reads the files as `nobody` when run as root.
    chmod -R a+rX target/book
    "$tools/linkchecker-$LINKCHECKER_VERSION/bin/linkchecker" --config docs/linkcheckerrc \
        --no-status target/book/index.html
}

if [ -z "${TEST_SKIP_SETUP:-}" ]; then
    step "Checking the system"
    check_system
    step "Installing the tools"
    install_tools
fi

step "The book (mdbook build docs, every link checked)"
check_book

step "The library, the host and the integration tests (cargo test --workspace)"
cargo test --workspace

step "The example plugins' own tests"
cargo test --manifest-path plugins/Cargo.toml

step "The API documentation (cargo doc, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "All passed"

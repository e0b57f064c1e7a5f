#!/usr/bin/env bash
# The quick start: builds the example plugins and the host, runs the host on the embedded
# default with the plugins exactly as cargo wrote them, publishes a user's events and a
# payment saga, and shows the user projection's read model, the saga's state and the
# events the saga emitted. Needs rustup and curl (and a network for crates).
#
#   QUICKSTART_PORT     the port to serve on (8080)
#   QUICKSTART_PROFILE  the cargo profile of the host: release (the default) or dev,
#                       which reuses the build the test command made
# (not EVHOST_…: evhost reads those as its own settings)
set -euo pipefail
# cargo reads a relative CARGO_TARGET_DIR from where it runs, and the plugins build in
# their own folder: pin it down before moving.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then export CARGO_TARGET_DIR=$(realpath -m "$CARGO_TARGET_DIR"); fi
cd "$(dirname "$0")/.."

work=$(mktemp -d)
host=
cleanup() {
    if [ -n "$host" ]; then kill "$host" 2>/dev/null || true; wait "$host" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Stops with the reason and everything the host logged, so a failure explains itself.
fail() {
    printf '\nquickstart failed: %s\n' "$*" >&2
    if [ -s "$work/evhost.log" ]; then
        printf -- '--- the host log ---\n' >&2
        cat "$work/evhost.log" >&2
    fi
    exit 1
}

for tool in rustup cargo curl; do
    command -v "$tool" >/dev/null || fail "\`$tool\` is not on the PATH (rustup: https://rustup.rs; curl: apt-get install curl)"
done
case ${QUICKSTART_PROFILE:-release} in
    release) profile=release out=release ;;
    dev) profile=dev out=debug ;;
    *) fail "QUICKSTART_PROFILE must be release or dev, not ${QUICKSTART_PROFILE}" ;;
esac

say "Building the example plugins (wasm32-wasip2) and the host"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || fail "rustup could not add the wasm32-wasip2 target"
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
cargo build --profile "$profile" -p evhost-cli --bin evhost --quiet
evhost=${CARGO_TARGET_DIR:-target}/$out/evhost
built=${CARGO_TARGET_DIR:-plugins/target}/wasm32-wasip2/release

# What cargo wrote, as it is: user_projection.wasm serves the plugin `user-projection`.
mkdir "$work/plugins"
cp "$built"/{user_projection,payment_saga,user_created_versions}.wasm "$work/plugins/"
port=${QUICKSTART_PORT:-8080}
export EVHOST_URL="http://127.0.0.1:$port"

# Whatever listens there already would keep the host from binding, and could be mistaken
# for it.
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "something already listens on 127.0.0.1:$port: stop it, or set QUICKSTART_PORT to a free port"
fi

say "Starting evhost on $EVHOST_URL with the plugins in $work/plugins"
ls "$work/plugins"
"$evhost" run --plugins "$work/plugins" --data-dir "$work/data" --listen "127.0.0.1:$port" \
    2> "$work/evhost.log" &
host=$!
ready=
for _ in $(seq 1 600); do
    kill -0 "$host" 2>/dev/null || fail "evhost exited before it was ready"
    if curl -fsS "$EVHOST_URL/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
[ -n "$ready" ] || fail "evhost did not answer $EVHOST_URL/readyz within a minute"
plugins=$("$evhost" plugins list)
printf '%s\n' "$plugins"
for plugin in user-projection payment-saga user-created-versions; do
    grep -q "^$plugin " <<<"$plugins" || fail "the plugin $plugin is not loaded"
done

say "A user is created, then renamed"
"$evhost" publish --type UserCreated --source users-service --subject u1 \
    --data '{"id": "u1", "name": "Ada", "email": "ada@example.com"}' --wait >/dev/null
"$evhost" publish --type UserProfileUpdated --source users-service --subject u1 \
    --data '{"name": "Ada Lovelace"}' --wait >/dev/null

say "The user projection's read model (GET /plugins/user-projection/kv/user:u1)"
"$evhost" plugins kv user-projection user:u1

say "A payment saga: PaymentCreated, then the inventory is reserved"
"$evhost" publish --type PaymentCreated --source payments-service --subject p1 --wait \
    --data '{"payment_id": "p1", "order_id": "o1", "amount": 4200, "currency": "EUR", "items": [{"sku": "book", "quantity": 1}]}' >/dev/null
"$evhost" publish --type InventoryReserved --source inventory-service --subject p1 --wait \
    --data '{"payment_id": "p1", "reservation_id": "r1"}' >/dev/null

say "The saga's state (GET /plugins/payment-saga/kv/saga:p1)"
"$evhost" plugins kv payment-saga saga:p1

say "The events the saga emitted (from the host's log)"
grep "plugin published events" "$work/evhost.log" || true
for emitted in InventoryReservationRequested ShipmentRequested; do
    grep "plugin published events" "$work/evhost.log" | grep -q "$emitted" \
        || fail "the saga did not emit $emitted"
done

say "The web UI: $EVHOST_URL/ui/ (open it in a browser while a host runs)"
curl -fsS "$EVHOST_URL/ui/" | grep -q '<title>evhost</title>' || fail "GET /ui/ did not serve the web UI"
echo "served"

say "Stopping evhost (SIGTERM drains in-flight events)"
kill -TERM "$host"
status=0
wait "$host" || status=$?
host=
tail -n 2 "$work/evhost.log"
[ "$status" -eq 0 ] || fail "evhost exited with status $status after SIGTERM"

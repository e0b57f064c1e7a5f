#!/usr/bin/env bash
# The quick start: builds the example plugins and the host, runs the host on the embedded
# default, publishes a user's events and a payment saga, and shows the user projection's
# read model and the events the saga emitted. Needs only rustup (and a network for crates).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Building the example plugins (wasm32-wasip2) and the host"
rustup target add wasm32-wasip2 >/dev/null
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
cargo build --release -p evhost-cli --quiet
evhost=./target/release/evhost

work=$(mktemp -d)
mkdir "$work/plugins"
cp plugins/target/wasm32-wasip2/release/*.wasm "$work/plugins/"
port=${EVHOST_QUICKSTART_PORT:-8080}
export EVHOST_URL="http://127.0.0.1:$port"

say "Starting evhost on $EVHOST_URL with plugins from $work/plugins"
"$evhost" run --plugins "$work/plugins" --data-dir "$work/data" --listen "127.0.0.1:$port" \
    2> "$work/evhost.log" &
host=$!
trap 'kill $host 2>/dev/null; wait $host 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 200); do
    "$evhost" plugins list >/dev/null 2>&1 && break
    kill -0 $host 2>/dev/null || { cat "$work/evhost.log"; exit 1; }
    sleep 0.1
done
"$evhost" plugins list

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
sleep 0.2

say "The saga's state (GET /plugins/payment-saga/kv/saga:p1)"
"$evhost" plugins kv payment-saga saga:p1

say "The events the saga emitted (from the host's log)"
grep "plugin published events" "$work/evhost.log"

say "Stopping evhost (SIGTERM drains in-flight events)"
kill -TERM $host
wait $host
tail -n 2 "$work/evhost.log"

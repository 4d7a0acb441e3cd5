#!/usr/bin/env bash
# What the agent's metrics cost per poll, counted in instructions (callgrind),
# which other work on the machine does not change (the `/proc` CPU of
# `cargo xtask bench poll` does not resolve 3 % on a shared machine).
#
# Two release agents side by side under `valgrind --tool=callgrind`, one with
# metrics off and one with them on, each polling DEVICES JSON `http` devices
# of one `tributary-sim --http-delay 20` every INTERVAL_MS, both streaming to
# one release collector (`--http-listen off`). Counters are zeroed WARMUP_S
# after the start (`callgrind_control -z`) and dumped WINDOW_S later
# (`callgrind_control -d`); the agent with metrics on is scraped with curl
# every 15 s of the window (Prometheus's default scrape_interval), the first
# scrape 7.5 s in. Polls in the window: the calls of
# `DeviceTask::record_health` (one per completed poll) in the dump.
#
# usage: tests/src/bench/metrics-cost.sh [INTERVAL_MS] [DEVICES]
#   env: BIN (default $CARGO_TARGET_DIR/release, built with
#        `cargo build --release -p tributary-agent -p tributary-collector
#        -p tributary-tests --bin tributary-sim`); AGENT, COLLECTOR, SIM
#        (default $BIN/tributary-agent, ...: only the agent's build matters,
#        the peers may be debug builds); WARMUP_S (25), WINDOW_S (60),
#        OUT (a new temp dir; the dumps and logs stay there)
set -euo pipefail

INTERVAL_MS=${1:-1000}
DEVICES=${2:-100}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
AGENT=${AGENT:-$BIN/tributary-agent}
COLLECTOR=${COLLECTOR:-$BIN/tributary-collector}
SIM_BIN=${SIM:-$BIN/tributary-sim}
WARMUP_S=${WARMUP_S:-25}
WINDOW_S=${WINDOW_S:-60}
OUT=${OUT:-$(mktemp -d /tmp/metrics-cost.XXXXXX)}
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

SIM=127.0.0.1:$(free_port)
COL=127.0.0.1:$(free_port)
"$SIM_BIN" --http "$SIM" --http-delay 20 >"$OUT/sim.log" 2>&1 &
pids+=($!)
printf '[limits]\nmax_connections_per_address = 1000000\n' >"$OUT/collector.toml"
"$COLLECTOR" serve --listen "$COL" --store "sqlite:$OUT/collector.db" \
    --http-listen off --config "$OUT/collector.toml" >"$OUT/collector.log" 2>&1 &
pids+=($!)
sleep 2

config() { # id listen
    printf 'id = "%s"\ncollectors = ["http://%s"]\n\n[spool]\ndir = "%s/%s-spool"\n\n[metrics]\nlisten = "%s"\n' \
        "$1" "$COL" "$OUT" "$1" "$2"
    for ((i = 0; i < DEVICES; i++)); do
        printf '\n[[devices]]\nname = "dev-%05d"\ndriver = "http"\nurl = "http://%s/meter?device=%d"\ninterval = "%dms"\nformat = "json"\n' \
            "$i" "$SIM" "$i" "$INTERVAL_MS"
        printf 'metrics = [\n  { name = "power", pointer = "/power", unit = "W" },\n  { name = "voltage", pointer = "/voltage", unit = "V" },\n  { name = "count", pointer = "/count" },\n]\n'
    done
}
METRICS=127.0.0.1:$(free_port)
config off off >"$OUT/off.toml"
config on "$METRICS" >"$OUT/on.toml"

declare -A agent
for leg in off on; do
    RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$leg" \
        "$AGENT" run --config "$OUT/$leg.toml" >"$OUT/$leg.log" 2>&1 &
    agent[$leg]=$!
    pids+=($!)
done

sleep "$WARMUP_S"
for leg in off on; do callgrind_control -z "${agent[$leg]}" >/dev/null; done
start=$(date +%s.%N)
scrapes=0
for at in $(python3 -c "w=$WINDOW_S; print(' '.join(str(7.5+15*k) for k in range(int((w-7.5)//15)+1) if 7.5+15*k < w))"); do
    python3 -c "import time; time.sleep(max(0, $start + $at - time.time()))"
    curl -sf "http://$METRICS/metrics" -o "$OUT/scrape-$scrapes.txt"
    scrapes=$((scrapes + 1))
done
python3 -c "import time; time.sleep(max(0, $start + $WINDOW_S - time.time()))"
for leg in off on; do callgrind_control -d "${agent[$leg]}" >/dev/null; done
sleep 2

# Instructions in the dump, and the calls of record_health (names are
# compressed: "(id) name" the first time, "(id)" after).
count() {
    python3 - "$1" <<'EOF'
import re, sys
names, target, polls, total = {}, set(), 0, 0
pending = False
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2)
        pending = line.startswith("cfn=") and "DeviceTask>::record_health" in names.get(m.group(1), "") \
            or (line.startswith("cfn=") and "DeviceTask::record_health" in names.get(m.group(1), ""))
        continue
    if pending and line.startswith("calls="):
        polls += int(line.split()[0][6:])
        pending = False
        continue
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
print(total, polls)
EOF
}
read -r off_ir off_polls < <(count "$(ls "$OUT"/callgrind.off* | grep -v '\.0$' | tail -1)")
read -r on_ir on_polls < <(count "$(ls "$OUT"/callgrind.on* | grep -v '\.0$' | tail -1)")
python3 - "$INTERVAL_MS" "$DEVICES" "$scrapes" "$off_ir" "$off_polls" "$on_ir" "$on_polls" "$OUT" <<'EOF'
import sys
iv, dev, scr, oi, op, ni, np_, out = sys.argv[1:]
oi, op, ni, np_ = int(oi), int(op), int(ni), int(np_)
print(f"devices {dev} at {iv} ms, window scraped {scr} times (metrics on); dumps in {out}")
print(f"{'':12} {'instructions':>14} {'polls':>7} {'per poll':>9}")
print(f"{'metrics off':12} {oi:>14,} {op:>7,} {oi/op:>9,.0f}")
print(f"{'metrics on':12} {ni:>14,} {np_:>7,} {ni/np_:>9,.0f}")
print(f"ratio {ni/np_/(oi/op):.3f} x")
EOF

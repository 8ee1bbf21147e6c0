#!/usr/bin/env bash
# soak.sh: runs `freekv serve` on the CPU backend for SECONDS under the load generator
# (`freekv bench-serve`, streams of random prompts) while a second client mixes in what real users
# send: malformed JSON, fields of the wrong type, ids outside the vocabulary, prompts longer than
# the context, streams dropped part-way (random cancellations), requests that run into
# --request-timeout, unknown routes. Every answer must be the expected status (never a 5xx other
# than the timeout's 504, never no answer), /health must stay 200, and once the load stops and the
# server is idle its resident set, open file descriptors and threads must be back where they were
# after the warm-up (a quarter of the run): RSS within 10% + 16 MiB, descriptors within 2, threads
# equal. Samples go to build/soak/resources.csv, the server's log to build/soak/server.log.
# Usage: scripts/soak.sh [SECONDS] [FREEKV_BINARY]   (default 600 s; CI runs 60)
# The model: FREEKV_REF_MODEL, else ../shared/models/freekv-ref-28m, else the synthetic `tiny` shape.
# Needs curl. Exits non-zero on any unexpected answer, a server that died, or resources that grew.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
bin="${2:-build/cuda-release/app/freekv}"
[ -x "$bin" ] || bin=build/cpu-release/app/freekv
if [ ! -x "$bin" ]; then
    echo "soak.sh: no freekv binary; building cpu-release" >&2
    cmake --preset cpu-release >/dev/null && cmake --build --preset cpu-release --target freekv
fi
command -v curl >/dev/null || { echo "soak.sh: curl is missing (scripts/setup_deps.sh installs it)" >&2; exit 1; }

model="${FREEKV_REF_MODEL:-../shared/models/freekv-ref-28m}"
if [ -f "$model/config.json" ]; then
    model_args=(-m "$model")
    vocab=$(grep -o '"vocab_size": *[0-9]*' "$model/config.json" | grep -o '[0-9]*$')
else
    echo "soak.sh: no reference model at $model: soaking the synthetic tiny shape instead"
    model_args=(--shape tiny)
    vocab=256
fi
n_ctx=1024
out=build/soak
mkdir -p "$out"
: >"$out/chaos.log"
: >"$out/load.log"

# A free port: the server refuses one in use, so try a few.
pid=""
for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 30000))
    "$bin" serve "${model_args[@]}" --port "$port" -c "$n_ctx" --max-batch 8 --max-queue 32 --kv-mode freekv \
        --kv-budget 256 --kv-sink 64 --kv-recent 64 --kv-page-size 32 --request-timeout 15 --no-chat \
        >"$out/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
done
[ -n "$pid" ] || { echo "soak.sh: the server did not start; its log:" >&2; tail -20 "$out/server.log" >&2; exit 1; }
trap 'kill "$pid" 2>/dev/null || true' EXIT
url="http://127.0.0.1:$port"
echo "soak.sh: $bin serve ${model_args[*]} on port $port (pid $pid) for $seconds s"

sample() {  # seconds-since-start,rss_kib,fds,threads
    local rss threads fds
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    threads=$(awk '/^Threads/ {print $2}' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    echo "$1,$rss,$fds,$threads"
}
echo "t_s,rss_kib,fds,threads" >"$out/resources.csv"
start=$(date +%s)
deadline=$((start + seconds))

# The load: bench-serve rounds of 8 streamed requests, 4 at a time, until the deadline.
(
    round=0
    while [ "$(date +%s)" -lt "$deadline" ]; do
        round=$((round + 1))
        "$bin" bench-serve --port "$port" --concurrency 4 --requests 8 --prompt-tokens $((32 + RANDOM % 256)) \
            --max-tokens 24 --vocab "$vocab" --seed "$round" --timeout 120 >>"$out/load.log" 2>&1 ||
            echo "load round $round: bench-serve reported failed requests" >>"$out/chaos.log"
    done
) &
load_pid=$!

# The chaos client: one odd request at a time; each line of chaos.log that starts with UNEXPECTED fails the run.
expect() {  # name, wanted status list, curl arguments...
    local name=$1 want=$2
    shift 2
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "$@" || true)
    case ",$want," in
        *",$got,"*) echo "ok $name $got" >>"$out/chaos.log" ;;
        *) echo "UNEXPECTED $name: HTTP $got, wanted $want" >>"$out/chaos.log" ;;
    esac
}
(
    while [ "$(date +%s)" -lt "$deadline" ]; do
        case $((RANDOM % 8)) in
            0) expect bad_json 400 -X POST -H 'Content-Type: application/json' --data '{"prompt": [1, 2' "$url/v1/completions" ;;
            1) expect wrong_types 400 -X POST -H 'Content-Type: application/json' \
                   --data '{"prompt": {"a": 1}, "max_tokens": "many", "temperature": [1]}' "$url/v1/completions" ;;
            2) expect ids_outside_vocab 400 -X POST -H 'Content-Type: application/json' \
                   --data "{\"prompt\": [1, $vocab, 3], \"max_tokens\": 4}" "$url/v1/completions" ;;
            3) long=$(seq -s, 1 $((n_ctx + 10)) | sed 's/[0-9]*/7/g')
               expect prompt_past_context 400 -X POST -H 'Content-Type: application/json' \
                   --data "{\"prompt\": [$long], \"max_tokens\": 4}" "$url/v1/completions" ;;
            4) # a stream dropped after a moment: curl gives up (000), the server must cancel it
               curl -s -N -o /dev/null --max-time "0.$((1 + RANDOM % 9))" -X POST -H 'Content-Type: application/json' \
                   --data '{"prompt": [5, 6, 7, 8], "max_tokens": 900, "stream": true}' "$url/v1/completions" || true
               echo "ok dropped_stream" >>"$out/chaos.log" ;;
            5) # runs into --request-timeout 15 (900 tokens take longer on the CPU under load) or finishes
               expect timeout_or_done 200,504 -X POST -H 'Content-Type: application/json' \
                   --data '{"prompt": [9, 10, 11], "max_tokens": 900, "temperature": 0.7}' "$url/v1/completions" ;;
            6) expect unknown_route 404 "$url/v1/nothing" ;;
            7) expect health 200 "$url/health" ;;
        esac
        sleep "0.$((RANDOM % 3))"
    done
) &
chaos_pid=$!

base=""
while [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 5
    kill -0 "$pid" 2>/dev/null || { echo "soak.sh: the server died; its log:" >&2; tail -30 "$out/server.log" >&2; exit 1; }
    now=$(($(date +%s) - start))
    s=$(sample "$now")
    echo "$s" >>"$out/resources.csv"
    if [ -z "$base" ] && [ "$now" -ge $((seconds / 4)) ]; then base=$s; fi
done
wait "$load_pid" "$chaos_pid" || true

# Idle: nothing running or waiting, and past the keep-alive of the last connections.
for _ in $(seq 1 300); do
    m=$(curl -s "$url/metrics")
    running=$(echo "$m" | awk '$1 == "freekv_requests_running" {print $2}')
    waiting=$(echo "$m" | awk '$1 == "freekv_requests_waiting" {print $2}')
    [ "$running" = "0" ] && [ "$waiting" = "0" ] && break
    sleep 1
done
sleep 6
final=$(sample "$(($(date +%s) - start))")
echo "$final" >>"$out/resources.csv"
[ -n "$base" ] || base=$(sed -n 2p "$out/resources.csv")

status=0
health=$(curl -s -o /dev/null -w '%{http_code}' "$url/health" || true)
[ "$health" = "200" ] || { echo "soak.sh: /health answered $health at the end" >&2; status=1; }
IFS=, read -r _ rss0 fds0 thr0 <<<"$base"
IFS=, read -r _ rss1 fds1 thr1 <<<"$final"
echo "soak.sh: after warm-up RSS ${rss0} KiB, ${fds0} fds, ${thr0} threads; at the end RSS ${rss1} KiB, ${fds1} fds, ${thr1} threads"
if [ "$rss1" -gt $((rss0 + rss0 / 10 + 16384)) ]; then echo "soak.sh: the resident set grew" >&2; status=1; fi
if [ "$fds1" -gt $((fds0 + 2)) ]; then echo "soak.sh: file descriptors leaked" >&2; status=1; fi
if [ "$thr1" -ne "$thr0" ]; then echo "soak.sh: the thread count changed" >&2; status=1; fi
unexpected=$(grep -c '^UNEXPECTED' "$out/chaos.log" || true)
load_failures=$(grep -c '^load round' "$out/chaos.log" || true)
served=$(grep -o '([0-9]* ok' "$out/load.log" | tr -d '(ok ' | awk '{s += $1} END {print s + 0}')
echo "soak.sh: $(grep -c '^ok' "$out/chaos.log" || true) odd requests answered as expected, $unexpected not;" \
    "the load generator's requests served: ${served:-0}; its rounds with failed requests: $load_failures"
[ "${served:-0}" -gt 0 ] || { echo "soak.sh: the load generator was served nothing" >&2; status=1; }
grep '^UNEXPECTED' "$out/chaos.log" | sort | uniq -c | head -10 || true
[ "$unexpected" -eq 0 ] || status=1
curl -s "$url/metrics" | grep '^freekv_requests_finished_total\|^freekv_requests_submitted_total\|^freekv_requests_rejected_total'
exit "$status"

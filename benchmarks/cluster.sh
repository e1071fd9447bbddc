#!/usr/bin/env bash
# The summary run on a Ballista cluster over S3, on one machine: moto's S3 server,
# a scheduler and two executors (2 task slots each), all started here and stopped
# at the end. Generates a warehouse on S3 and runs one monthly batch with
# `--engine`, writing the run report (stage times, what the sqlplan process
# received from the cluster) and the sqlplan process's peak memory.
#
#   benchmarks/cluster.sh [ACCOUNTS] [BATCH_RECORDS] [OUT.json]
#
# Needs python3 with moto's server (pip install "moto[server]" boto3) and
# GNU time (/usr/bin/time). LOCAL=1 runs the same on S3 with the local engine
# (no cluster), to tell the cluster's cost from S3's. SQLPLAN is the binary [default: debug/sqlplan under
# CARGO_TARGET_DIR, which defaults to the one .ci/run uses].
set -euo pipefail
cd "$(dirname "$0")/.."
accounts=${1:-100000}
batch=${2:-$accounts}
out=${3:-cluster-$accounts-$batch.json}
target=${CARGO_TARGET_DIR:-$HOME/.cache/sqlplan-target}
sqlplan=${SQLPLAN:-$target/debug/sqlplan}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

s3=$(port)
python3 -m moto.server -H 127.0.0.1 -p "$s3" >"$work/moto.log" 2>&1 &
pids+=($!)
wait_port "$s3"
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true RUST_LOG=${RUST_LOG:-warn}
python3 -c "import boto3; boto3.client('s3').create_bucket(Bucket='warehouse')"

warehouse=s3://warehouse/wh
echo "generating $accounts accounts, a batch of $batch records, on S3" >&2
"$sqlplan" generate summary --warehouse "$warehouse" --accounts "$accounts" --batch-records "$batch" >&2

engine=()
setup="moto S3 on this machine, the local engine"
if [ -z "${LOCAL:-}" ]; then
    scheduler=$(port)
    "$sqlplan" scheduler --port "$scheduler" 2>"$work/scheduler.log" &
    pids+=($!)
    wait_port "$scheduler"
    for i in 1 2; do
        flight=$(port)
        grpc=$(port)
        "$sqlplan" executor --scheduler "127.0.0.1:$scheduler" --port "$flight" \
            --grpc-port "$grpc" --concurrent-tasks 2 --work-dir "$work" 2>"$work/executor-$i.log" &
        pids+=($!)
        wait_port "$flight"
    done
    engine=(--engine "df://127.0.0.1:$scheduler")
    setup="moto S3, a scheduler and 2 executors (2 task slots each) on this machine"
fi
echo "running: $setup" >&2
/usr/bin/time -f '%M %e' -o "$work/time" \
    "$sqlplan" run pipelines/summary.yaml --var "warehouse=$warehouse" \
    "${engine[@]}" --report "$out" >&2
read -r peak_kib seconds <"$work/time"
python3 - "$out" "$peak_kib" "$seconds" "$accounts" "$batch" "$setup" <<'EOF'
import json, sys
path, peak_kib, seconds, accounts, batch, setup = sys.argv[1:]
report = json.load(open(path))
report["benchmark"] = {
    "setup": setup,
    "accounts": int(accounts),
    "batch_records": int(batch),
    "seconds": float(seconds),
    "sqlplan_peak_rss_mib": round(int(peak_kib) / 1024, 1),
}
json.dump(report, open(path, "w"), indent=2)
r = report.get("received") or {"rows": 0, "bytes": 0}
print(f"run {float(seconds):.1f} s; sqlplan process peak {int(peak_kib)/1024:.0f} MiB; "
      f"received {r['rows']} rows, {r['bytes']/1e6:.1f} MB from the cluster")
EOF

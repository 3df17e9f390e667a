#!/usr/bin/env bash
# make bench: wasmcell against references measured in the same run, on the
# same private containerd, printed as ratios.
#   1. ctr run --rm start-up: runc + static `true` vs the hello component,
#      cold (empty compile cache) and warm; the same for a large (~18 MB)
#      component built with componentize-py from PyPI.
#   2. Idle cost: PSS of one idle long-running container, all its processes
#      summed, runc (static sleep) vs wasmcell (a guest sleeping).
#   3. CPU quota: a busy-loop guest under --cpu-quota uses its quota.
#   4. CPU shares: busy loops weighted 2048/1024/1024 contending for the
#      cores, runc (the kernel weighs sibling cgroups) vs the guests of one
#      wasmcell pod (the shim weighs its guests).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
trap cd_stop EXIT
RUNS="${BENCH_RUNS:-20}"
COLD_RUNS="${BENCH_COLD_RUNS:-5}"
cd_start
work="$CD_DIR/bench"; mkdir -p "$work"
CACHE="$CD_DIR/cache"
RUNTIME=io.containerd.wasmtime.v1
gcc -static -O2 -o "$work/true" "$ROOT/test/bench/true.c"
gcc -static -O2 -o "$work/sleep" "$ROOT/test/bench/sleep.c"
gcc -static -O2 -o "$work/spin" "$ROOT/test/bench/spin.c"
"$BIN/wasmcell" image build -t bench/native:latest --platform linux/amd64 --entrypoint /true \
  -o "$work/native.tar" "$work/true:/true" "$work/sleep:/sleep" "$work/spin:/spin" >/dev/null
"$BIN/wasmcell" image build -t bench/hello:latest -o "$work/hello.tar" \
  "$ROOT/test/fixtures/wasm/hello.wasm" "$ROOT/test/fixtures/wasm/probe.wasm" --entrypoint /hello.wasm >/dev/null
CTR images import "$work/native.tar" >/dev/null
CTR images import --all-platforms "$work/hello.tar" >/dev/null

# The large component: a Python program made into a WASI 0.2 command by
# componentize-py (from PyPI, in a venv cached between runs), ~18 MB of Wasm.
VENV="${WASMCELL_BENCH_CACHE:-/var/cache/wasmcell/bench}/venv"
if [ ! -x "$VENV/bin/componentize-py" ]; then
  echo "installing componentize-py into $VENV ..."
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q componentize-py ||
    { echo "bench: cannot install componentize-py from PyPI (needs python3-venv and PyPI access)" >&2; exit 1; }
fi
WIT="$(ls -d "$HOME"/.cargo/registry/src/*/wasmtime-wasi-48.*/src/p2/wit 2>/dev/null | head -1 || true)"
[ -n "$WIT" ] || { echo "bench: WASI WIT files not found (run cargo fetch first)" >&2; exit 1; }
WORLD="$(sed -n 's/^package \(wasi:cli@[0-9.]*\);/\1/p' "$WIT/deps/cli.wit" | sed 's#@#/command@#')"
(cd "$work" && cp "$ROOT/test/bench/large.py" app.py &&
  "$VENV/bin/componentize-py" -d "$WIT" -w "$WORLD" componentize app -o large.wasm >/dev/null)
LARGE="$work/large.wasm"
"$BIN/wasmcell" image build -t bench/large:latest -o "$work/large.tar" "$LARGE:/large.wasm" >/dev/null
CTR images import --all-platforms "$work/large.tar" >/dev/null
echo "large component: $(du -h "$LARGE" | cut -f1) ($(stat -c %s "$LARGE") bytes)"

RUNC="ctr -a $CD_DIR/c.sock run --rm bench/native:latest b-runc /true"
HELLO="ctr -a $CD_DIR/c.sock run --rm --platform wasi/wasm --runtime $RUNTIME bench/hello:latest b-hello"
LARGE_CMD="ctr -a $CD_DIR/c.sock run --rm --platform wasi/wasm --runtime $RUNTIME bench/large:latest b-large"
# Warm up snapshots and the page cache.
$RUNC; $HELLO >/dev/null; $LARGE_CMD >/dev/null

hf() { hyperfine --style none -N "$@" >/dev/null; }
echo "timing ctr run --rm ($RUNS warm runs, $COLD_RUNS cold runs each)..."
warm_cmds=(-n runc-true "$RUNC" -n hello-warm "$HELLO" -n large-warm "$LARGE_CMD")
hf --warmup 2 --runs "$RUNS" --export-json "$work/warm.json" "${warm_cmds[@]}"
hf --runs "$COLD_RUNS" --prepare "rm -rf $CACHE" --export-json "$work/cold-hello.json" -n hello-cold "$HELLO"
hf --runs "$COLD_RUNS" --prepare "rm -rf $CACHE" --export-json "$work/cold-large.json" -n large-cold "$LARGE_CMD"

# Idle cost: PSS summed over every process of the container.
pss_kb() { awk '/^Pss:/{s+=$2} END{print s+0}' "$@" 2>/dev/null; }
tree_pids() { local p=$1; echo "$p"; for c in $(cat /proc/$p/task/*/children 2>/dev/null); do tree_pids "$c"; done; }
# The compile cache is warm, as for every start but a component's first on
# a node (the start-up runs above emptied it).
CTR run --rm --platform wasi/wasm --runtime $RUNTIME bench/hello:latest warm-probe /probe.wasm sleep 1 >/dev/null
CTR run -d bench/native:latest idle-runc /sleep >/dev/null
CTR run -d --platform wasi/wasm --runtime $RUNTIME bench/hello:latest idle-wasm /probe.wasm sleep 3600000 >/dev/null
sleep 2
runc_task=$(CTR task ls | awk '$1=="idle-runc"{print $2}')
runc_shim=$(awk '{print $4}' /proc/$runc_task/stat)
wasm_task=$(CTR task ls | awk '$1=="idle-wasm"{print $2}')
runc_files=(); for p in $(tree_pids "$runc_shim"); do runc_files+=("/proc/$p/smaps_rollup"); done
wasm_files=(); for p in $(tree_pids "$wasm_task"); do wasm_files+=("/proc/$p/smaps_rollup"); done
RUNC_PSS=$(pss_kb "${runc_files[@]}"); WASM_PSS=$(pss_kb "${wasm_files[@]}")
RUNC_PROCS=${#runc_files[@]}; WASM_PROCS=${#wasm_files[@]}
for id in idle-runc idle-wasm; do CTR task kill -s SIGKILL $id >/dev/null 2>&1 || true; done
sleep 0.5
for id in idle-runc idle-wasm; do CTR task delete $id >/dev/null 2>&1 || true; CTR containers rm $id >/dev/null 2>&1 || true; done

# Density: K idle containers, each set measured alone (file pages shared
# between sets would lower each other's PSS). runc: K shims + K processes.
# wasmcell as a pod: the K containers of one pod (CRI's sandbox-id
# annotation, set here through ctr) share one shim process, as every pod's
# containers do under Kubernetes. wasmcell as plain `ctr run`s: K shims,
# which share the binary's pages with each other.
K="${BENCH_DENSITY:-10}"
task_pid() { CTR task ls | awk -v id="$1" '$1==id{print $2}'; }
density() {  # set name, then the ctr run arguments before the id; prints "PSS_KB PROCESSES"
  local set=$1 i t pids=() files=(); shift
  for i in $(seq 1 "$K"); do CTR run -d "$@" "dens-$set-$i" "${DENS_CMD[@]}" >/dev/null; done
  sleep 2
  for i in $(seq 1 "$K"); do
    t=$(task_pid "dens-$set-$i"); pids+=("$t")
    # runc: the container's process and its shim; wasmcell: the shim.
    [ "$set" = runc ] && pids+=("$(awk '{print $4}' /proc/$t/stat)")
  done
  pids=($(printf '%s\n' "${pids[@]}" | sort -u))
  for t in "${pids[@]}"; do files+=("/proc/$t/smaps_rollup"); done
  echo "$(pss_kb "${files[@]}") ${#pids[@]}"
  for i in $(seq 1 "$K"); do CTR task kill -s SIGKILL "dens-$set-$i" >/dev/null 2>&1 || true; done
  sleep 0.5
  for i in $(seq 1 "$K"); do CTR task delete "dens-$set-$i" >/dev/null 2>&1 || true; CTR containers rm "dens-$set-$i" >/dev/null 2>&1 || true; done
}
DENS_CMD=(/sleep)
read -r DENS_RUNC _ < <(density runc bench/native:latest)
DENS_CMD=(/probe.wasm sleep 3600000)
read -r DENS_WASM DENS_WASM_PROCS < <(density pod --annotation io.kubernetes.cri.sandbox-id=bench-pod \
  --platform wasi/wasm --runtime $RUNTIME bench/hello:latest)
read -r DENS_SOLO DENS_SOLO_PROCS < <(density solo --platform wasi/wasm --runtime $RUNTIME bench/hello:latest)

# HTTP: the idle and loaded PSS of the hello handler's container. Its
# throughput against native, `wasmtime serve` and runwasi is `make
# bench-http` (run by `make bench` before this script).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl_ok "$1" && return 0; sleep 0.05; done; echo "bench: nothing answers at $1" >&2; return 1; }
curl_ok() { python3 -c 'import sys,urllib.request; urllib.request.urlopen("http://"+sys.argv[1]+"/", timeout=2)' "$1" 2>/dev/null; }
"$BIN/wasmcell" image build -t bench/http:latest -o "$work/http.tar" "$ROOT/test/fixtures/wasm/http.wasm" >/dev/null
CTR images import --all-platforms "$work/http.tar" >/dev/null
SHIM_ADDR="127.0.0.1:$(free_port)"
# --null-io: nobody reads a detached container's stdout, and a guest that
# logs every request would otherwise block on the full pipe.
CTR run -d --null-io --net-host --env "WASMCELL_HTTP_ADDR=$SHIM_ADDR" --platform wasi/wasm --runtime $RUNTIME bench/http:latest http-bench >/dev/null
wait_http "$SHIM_ADDR"
sleep 1
http_task=$(CTR task ls | awk '$1=="http-bench"{print $2}')
HTTP_IDLE_PSS=$(pss_kb "/proc/$http_task/smaps_rollup")
wrk -t1 -c32 -d3s "http://$SHIM_ADDR/bench" >/dev/null
HTTP_LOADED_PSS=$(pss_kb "/proc/$http_task/smaps_rollup")
CTR task kill -s SIGKILL http-bench >/dev/null 2>&1 || true; sleep 0.3
CTR task delete http-bench >/dev/null 2>&1 || true; CTR containers rm http-bench >/dev/null 2>&1 || true

# CPU quota: a guest that never yields, under --cpu-quota/--cpu-period,
# measured from the shim process's CPU time (utime+stime) over wall time.
QUOTA=25000 PERIOD=100000 SECS="${BENCH_QUOTA_SECS:-4}"
"$BIN/wasmcell" image build -t bench/spin:latest -o "$work/spin.tar" "$ROOT/test/fixtures/wasm/spin.wasm" >/dev/null
CTR images import --all-platforms "$work/spin.tar" >/dev/null
CTR run -d --cpu-quota $QUOTA --cpu-period $PERIOD --platform wasi/wasm --runtime $RUNTIME bench/spin:latest quota >/dev/null
pid=$(CTR task ls | awk '$1=="quota"{print $2}')
cpu0=$(awk '{print $14+$15}' /proc/$pid/stat); t0=$(date +%s.%N)
sleep "$SECS"
cpu1=$(awk '{print $14+$15}' /proc/$pid/stat); t1=$(date +%s.%N)
CTR task kill -s SIGKILL quota >/dev/null; sleep 0.3
CTR task delete quota >/dev/null 2>&1 || true; CTR containers rm quota >/dev/null

# CPU shares: three busy loops with cpu.shares 2048, 1024 and 1024 contend
# for this machine's cores; each container's CPU time from `ctr task
# metrics` (its cgroup for runc, the guest's own accounting for wasmcell).
SHARES_SECS="${BENCH_SHARES_SECS:-4}"
# (runc reports its cgroup: v1 cpuacct.usage in ns, or v2 cpu.usage_usec.)
cpu_usec() { CTR task metrics "$1" | awk '$1=="cpu.usage_usec"{print $2} $1=="cpuacct.usage"{printf "%d\n", $2/1000}'; }
shares_measure() {  # prefix: prints "heavy light1 light2" in cores
  local p=$1 u0=() u1=() t0 t1
  sleep 1
  for c in heavy light1 light2; do u0+=("$(cpu_usec "$p-$c")"); done; t0=$(date +%s.%N)
  sleep "$SHARES_SECS"
  for c in heavy light1 light2; do u1+=("$(cpu_usec "$p-$c")"); done; t1=$(date +%s.%N)
  for c in heavy light1 light2; do CTR task kill -s SIGKILL "$p-$c" >/dev/null 2>&1 || true; done
  sleep 0.5
  for c in heavy light1 light2; do CTR task delete "$p-$c" >/dev/null 2>&1 || true; CTR containers rm "$p-$c" >/dev/null 2>&1 || true; done
  python3 -c 'import sys; a=sys.argv[1:]; dt=float(a[7])-float(a[6]); print(" ".join(f"{(int(a[3+i])-int(a[i]))/1e6/dt:.3f}" for i in range(3)))' \
    "${u0[@]}" "${u1[@]}" "$t0" "$t1"
}
for c in heavy:2048 light1:1024 light2:1024; do
  CTR run -d --null-io --cpu-shares "${c#*:}" bench/native:latest "sh-runc-${c%%:*}" /spin >/dev/null
done
SHARES_RUNC=$(shares_measure sh-runc)
for c in heavy:2048 light1:1024 light2:1024; do
  CTR run -d --null-io --cpu-shares "${c#*:}" --annotation io.kubernetes.cri.sandbox-id=shares-pod \
    --platform wasi/wasm --runtime $RUNTIME bench/spin:latest "sh-wasm-${c%%:*}" >/dev/null
done
SHARES_WASM=$(shares_measure sh-wasm)

python3 - "$work" "$RUNC_PSS" "$WASM_PSS" "$RUNC_PROCS" "$WASM_PROCS" \
  "$cpu0" "$cpu1" "$t0" "$t1" "$(getconf CLK_TCK)" "$QUOTA" "$PERIOD" \
  "0" "0" "$HTTP_IDLE_PSS" "$HTTP_LOADED_PSS" "$K" "$DENS_RUNC" "$DENS_WASM" "$DENS_WASM_PROCS" \
  "$SHARES_RUNC" "$SHARES_WASM" "$(nproc)" "$SHARES_SECS" "$DENS_SOLO" "$DENS_SOLO_PROCS" <<'PY'
import json, os, sys
work = sys.argv[1]
runc_pss, wasm_pss, runc_n, wasm_n = map(int, sys.argv[2:6])
c0, c1, t0, t1, tick, q, p = map(float, sys.argv[6:13])
shim_rps, base_rps = float(sys.argv[13] or 0), float(sys.argv[14] or 0)
http_idle, http_loaded = int(sys.argv[15]), int(sys.argv[16])
k, dens_runc, dens_wasm, dens_procs = map(int, sys.argv[17:21])
res = {}
for f in ["warm.json", "cold-hello.json", "cold-large.json"]:
    path = os.path.join(work, f)
    if os.path.exists(path):
        for r in json.load(open(path))["results"]:
            res[r["command"]] = r
base = res["runc-true"]["mean"]
print()
print("ctr run --rm start-up, mean (ratio to runc running a static true):")
for name, label in [("runc-true", "runc, static true"), ("hello-cold", "hello component, cold cache"),
                    ("hello-warm", "hello component, warm cache"), ("large-cold", "large component, cold cache"),
                    ("large-warm", "large component, warm cache")]:
    if name in res:
        m = res[name]["mean"]
        print(f"  {label:32s} {m*1000:9.1f} ms  {m/base:6.2f}x")
if "large-warm" in res:
    print(f"  large warm / hello warm          {res['large-warm']['mean']/res['hello-warm']['mean']:9.2f}x")
print()
print("idle container (compile cache warm), PSS of all its processes:")
print(f"  runc, static sleep               {runc_pss/1024:9.1f} MiB  ({runc_n} processes)")
print(f"  wasmcell, sleeping guest         {wasm_pss/1024:9.1f} MiB  ({wasm_n} process)")
print(f"  ratio wasmcell/runc              {wasm_pss/runc_pss:9.2f}x")
print()
dens_solo, solo_procs = int(sys.argv[25]), int(sys.argv[26])
print(f"{k} idle containers, PSS of all their processes:")
print(f"  runc, static sleep               {dens_runc/1024:9.1f} MiB  ({2*k} processes)")
print(f"  wasmcell, one pod                {dens_wasm/1024:9.1f} MiB  ({dens_procs} process)   {dens_wasm/dens_runc:5.2f}x")
print(f"  wasmcell, {k} ctr runs            {dens_solo/1024:9.1f} MiB  ({solo_procs} processes) {dens_solo/dens_runc:5.2f}x")
print()
print("HTTP hello handler container (throughput: the bench-http table above):")
print(f"  HTTP container PSS idle          {http_idle/1024:9.1f} MiB  (after load {http_loaded/1024:.1f} MiB)")
print(f"  ratio idle HTTP/runc sleep       {http_idle/runc_pss:9.2f}x")
used = (c1 - c0) / tick / (t1 - t0)
print()
print(f"CPU quota, busy-loop guest, {q/p:.2f} of a core granted:")
print(f"  used {used:.3f} of a core over {t1-t0:.1f} s (shim process CPU time)")
print(f"  ratio used/quota                 {used/(q/p):9.2f}x")
sr, sw = [list(map(float, a.split())) for a in sys.argv[21:23]]
print()
print(f"CPU shares 2048/1024/1024, three busy loops on {sys.argv[23]} cores, cores used over {sys.argv[24]} s:")
for label, v in [("runc (kernel, sibling cgroups)", sr), ("wasmcell (guests of one pod)", sw)]:
    print(f"  {label:31s} {v[0]:.2f} {v[1]:.2f} {v[2]:.2f}  heavy/light {2*v[0]/(v[1]+v[2]):.2f}x")
print(f"  ratio of heavy/light, wasmcell/runc {(sw[0]/(sw[1]+sw[2]))/(sr[0]/(sr[1]+sr[2])):6.2f}x")
PY

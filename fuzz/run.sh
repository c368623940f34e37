#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer on the stable toolchain and runs each
# for a bounded time on its checked-in corpus; exits non-zero on any crash,
# leak of a panic, timeout or out-of-memory. See fuzz/README.md.
#
#   fuzz/run.sh [--seconds N] [--jobs N] [--out DIR] [--build-only] [TARGET...]
#
# --seconds  time per target (default 30)
# --jobs     targets run at once (default 1)
# --out      keep each target's libFuzzer log and new corpus entries in DIR
#            (the campaign's raw stats); default: a temporary directory
# --bin-dir  run the binaries in DIR, built earlier, instead of building
# TARGET     a subset of the targets (default: all of them)
set -euo pipefail
cd "$(dirname "$0")"

seconds=30
jobs=1
out=
build_only=false
bin_dir=
targets=()
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --build-only) build_only=true; shift ;;
    --bin-dir) bin_dir=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n 2,14p "$0"; exit 0 ;;
    -*) echo "fuzz/run.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(annotations node_view desired_plan tunnel_uapi agent_uapi gro tso netlink_wireguard netlink_routing)
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz/run.sh: no target $t (have: ${all[*]})" >&2; exit 2; }
done

# What cargo-fuzz passes with `--sanitizer none`, all stable rustc options:
# SanitizerCoverage's 8-bit edge counters, PC table and comparison tracing
# (libFuzzer's coverage and value profile), `cfg(fuzzing)`, and the checks of
# a debug build so an overflow or a failed debug assertion is a finding.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$PWD/target"
# An explicit target, as cargo-fuzz does, keeps the flags off build scripts
# and proc macros (they run on the host and have no libFuzzer to link).
host=$(rustc -vV | sed -n 's/^host: //p')
started=$SECONDS
if [ -z "$bin_dir" ]; then
  cargo build --release --locked --bins --target "$host"
  echo "fuzz/run.sh: built in $((SECONDS - started)) s"
  bin_dir="$PWD/target/$host/release"
fi
$build_only && exit 0

[ -n "$out" ] || { out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; }
mkdir -p "$out"
run_one() {
  local t=$1 dir="$out/$1"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  # New inputs go to the run's own directory; the checked-in corpus is read only.
  # -rss_limit_mb: the tunnel's GRO batch alone is 4 MiB; 2 GiB catches runaway growth.
  local -a args=(
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" "corpus/$t"
  )
  [ -f "dict/$t.dict" ] && args+=(-dict="dict/$t.dict")
  if "$bin_dir/$t" "${args[@]}" >"$dir/log" 2>&1; then
    # libFuzzer's last status line: "#RUNS ... cov: EDGES ft: FEATURES corp: N/SIZE ...".
    local last
    last=$(grep -E '^#[0-9]+.*cov: ' "$dir/log" | tail -1)
    printf '%s runs=%s cov=%s ft=%s corpus=%s secs=%s\n' "$t" \
      "$(grep -E '^stat::number_of_executed_units' "$dir/log" | awk '{print $2}')" \
      "$(sed -E 's/.* cov: ([0-9]+).*/\1/' <<<"$last")" \
      "$(sed -E 's/.* ft: ([0-9]+).*/\1/' <<<"$last")" \
      "$(sed -E 's/.* corp: ([^ ]+).*/\1/' <<<"$last")" "$seconds" | tee "$dir/summary"
  else
    echo "fuzz/run.sh: $t FAILED; the input is in $dir/artifacts, the log says:" >&2
    grep -A4 'panicked at' "$dir/log" >&2 || true
    grep -E '^(SUMMARY|==[0-9]+== ERROR|artifact_prefix)' "$dir/log" >&2 || true
    return 1
  fi
}
failed=0
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while ((running)); do
  wait -n || failed=1
  running=$((running - 1))
done
echo "fuzz/run.sh: ${#targets[@]} targets, $seconds s each, $((SECONDS - started)) s in all"
exit $failed

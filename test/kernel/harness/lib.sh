# shellcheck shell=bash
# Shared helpers and settings for the real-kernel harness (sourced, not run).
# Every knob is an environment variable; see test/kernel/harness/README.md.

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$HARNESS_DIR/../../.." && pwd)

# Bump when the layout of a cache entry changes, so old entries are not reused.
HARNESS_CACHE_FORMAT=1

KERNEL_SOURCE_PACKAGE=linux-source-6.12
CACHE_ROOT=${VFIO_IOMMUFD_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-iommufd/kernel}
JOBS=${VFIO_IOMMUFD_JOBS:-$(nproc)}
COMPAT_HEADER=$HARNESS_DIR/iommufd-selftest-compat.h

# Exit codes shared by the scripts.
EXIT_TESTS_FAILED=1      # a test failed, a baseline test went missing, or a suite did not report
EXIT_USAGE=2             # bad knob or argument
EXIT_SETUP=3             # packages, kernel/selftest build or project build failed
EXIT_GUEST=4             # guest timed out, panicked or did not finish

_t0=${_HARNESS_T0:-$(date +%s)}
export _HARNESS_T0=$_t0

# Progress and diagnostics go to stderr, prefixed with the elapsed time.
log() { local s=$(( $(date +%s) - _t0 )); printf '[kernel-harness %02d:%02d] %s\n' $((s / 60)) $((s % 60)) "$*" >&2; }
die() { local code=$1; shift; log "error: $*"; exit "$code"; }

# Run "$@" with its output in $1's log file; every $interval s, print how long it has run and
# the last line of the log. On failure, print the log's tail.
run_logged() {
  local logfile=$1 what=$2; shift 2
  local interval=${PROGRESS_INTERVAL:-60} start=$(date +%s) pid rc
  # own session, so an interruption of the harness stops the whole job (make and its compilers)
  setsid -w "$@" >"$logfile" 2>&1 </dev/null &
  pid=$!
  trap 'kill -TERM -- -'"$pid"' 2>/dev/null || kill -TERM '"$pid"' 2>/dev/null; log "$what: interrupted"; exit 130' INT TERM HUP
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq "$interval"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      local n; n=$(grep -cE '^  (CC|AS|LD|AR) ' "$logfile" 2>/dev/null || true); [ "$n" = 0 ] && n=
      log "$what: $(( $(date +%s) - start ))s${n:+, $n objects}; last: $(tail -n1 "$logfile" | cut -c1-80)"
    fi
  done
  wait "$pid" && rc=0 || rc=$?
  trap - INT TERM HUP
  if [ "$rc" != 0 ]; then
    log "$what failed (rc=$rc) after $(( $(date +%s) - start ))s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2
  else
    log "$what done in $(( $(date +%s) - start ))s"
  fi
  return "$rc"
}

source_version() { dpkg-query -W -f='${Version}' "$KERNEL_SOURCE_PACKAGE" 2>/dev/null; }

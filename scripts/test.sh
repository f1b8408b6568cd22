#!/usr/bin/env bash
# vkmsremote's test command. On a fresh Debian machine it does everything:
#   1. scripts/setup-host.sh     Debian packages + .venv with the project and its dev tools
#   2. scripts/build-kernel.sh   the VKMS test kernel, VKMS a module as in distributions (cached in
#                                ~/.cache/vkmsremote/kernel; the VM runner binds its modules and loads vkms)
#   3. ruff check, dead code (vulture, scripts/deadcode.py), mypy vkmsremote
#   4. host tests:  pytest -m "not vm" tests
#   5. VM tests:    pytest -m vm tests, all in ONE boot of the test kernel (python -m vkmsremote.vm)
#   6. guest tests: tests/guest in ONE boot of the Debian 13 guest with systemd as PID 1 (python -m
#                   vkmsremote.vm.guest --desktop): the systemd unit, and GNOME Shell and KWin on XR-0 in
#                   logind sessions; the tree is the set-up's (scripts/build-guest.sh) plus the desktops
#                   (scripts/build-guest-desktop.sh, cached). VKMSREMOTE_DESKTOPS=0: the plain tree, no desktops.
# Every stage runs even if an earlier one failed (unless it depends on it); the exit status is
# non-zero if any stage failed. Extra arguments go to both pytest runs (e.g. -k name, -x).
# Guest artefacts and the VM tests' JUnit XML land in build/vm-results/ (the Debian 13 guest's, with its
# journal, console and systemd-analyze security, in build/guest-results/). Environment: VKMSREMOTE_VM_TIMEOUT
# (seconds for the VM stage, default 3600, so the whole run stays inside CI's 90 minutes), VKMSREMOTE_VM_ACCEL=kvm|tcg|auto, VKMSREMOTE_KERNEL=<bzImage> (skips the build).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py=$top/.venv/bin/python
vm_timeout=${VKMSREMOTE_VM_TIMEOUT:-3600}  # one boot runs every VM test; each test also has pytest-timeout
results_dir=$top/build/vm-results

bold() { printf '\033[1m%s\033[0m\n' "$*" >&2; }
t_all=$(date +%s)
summary=()
failed=0

# stage NAME COMMAND...: run it, time it, record PASS/FAIL. pytest's 5 (nothing collected) is a failure.
stage() {
  local name=$1; shift
  bold "==> $name: $*"
  local t0 rc
  t0=$(date +%s)
  "$@"
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then
    summary+=("PASS $name (${dt}s)")
  else
    [ "$rc" -eq 5 ] && bold "$name: pytest collected no tests"
    summary+=("FAIL $name (exit $rc, ${dt}s)")
    failed=1
  fi
  return "$rc"
}
skip() { summary+=("SKIP $1 ($2)"); failed=1; bold "==> $1: not run: $2"; }

finish() {
  bold "==> summary"
  local line
  for line in "${summary[@]}"; do bold "  $line"; done
  local total=$(( $(date +%s) - t_all ))
  if [ "$failed" -eq 0 ]; then
    bold "test.sh: ALL PASSED in ${total}s"
  else
    bold "test.sh: FAILED in ${total}s"
  fi
  exit "$failed"
}

if ! stage setup scripts/setup-host.sh; then
  skip kernel "set-up failed"; finish
fi

kernel=
if [ -n "${VKMSREMOTE_KERNEL:-}" ]; then
  stage kernel test -f "$VKMSREMOTE_KERNEL" && kernel=$VKMSREMOTE_KERNEL
else
  kernel_out=$(mktemp)
  if stage kernel bash -c 'scripts/build-kernel.sh > "$1"' _ "$kernel_out"; then
    kernel=$(tail -1 "$kernel_out")
  fi
  rm -f "$kernel_out"
fi

stage ruff "$top/.venv/bin/ruff" check .
stage deadcode "$py" scripts/deadcode.py  # vulture over vkmsremote/, allow-list: vulture_allowlist.py
stage mypy "$top/.venv/bin/mypy" vkmsremote
# the layer contracts in pyproject.toml (docs/architecture.md); the host tests report coverage of the core layers
stage imports env PYTHONPATH="$top" "$top/.venv/bin/lint-imports" --no-cache --no-logo
stage host-tests "$py" -m pytest -m "not vm" tests \
  --cov=vkmsremote.rfb --cov=vkmsremote.capture --cov=vkmsremote.server --cov-report=term "$@"

# Every vm-marked test (tests/vm/ and the VM benchmark smoke) in one boot.
vm_targets=(tests)

if [ -n "$kernel" ]; then
  rm -rf "$results_dir"; mkdir -p "$results_dir"
  stage vm-tests "$py" -m vkmsremote.vm --kernel "$kernel" --timeout "$vm_timeout" \
    --results-dir "$results_dir" -- \
    "$py" -m pytest -m vm "${vm_targets[@]}" --junitxml="$results_dir/junit-vm.xml" "$@"
else
  skip vm-tests "no test kernel"
fi

# The systemd unit under a real systemd, and GNOME Shell and KWin on XR-0: one boot of the Debian 13 guest's
# desktop variant runs every test in tests/guest (scripts/build-guest-desktop.sh adds the desktops to the
# set-up's tree: about 7 min once, then cached). VKMSREMOTE_DESKTOPS=0 boots the plain tree without them.
guest_dir=$top/build/guest-results
if [ -n "$kernel" ]; then
  rm -rf "$guest_dir"; mkdir -p "$guest_dir"
  if [ "${VKMSREMOTE_DESKTOPS:-1}" = 0 ]; then
    stage guest-tests "$py" -m vkmsremote.vm.guest --kernel "$kernel" --timeout 1200 \
      --results-dir "$guest_dir" -- python3 -m pytest tests/guest --junitxml=/guest-run/junit-guest.xml
  else
    stage guest-desktop-tree "$top/scripts/build-guest-desktop.sh"
    stage guest-tests "$py" -m vkmsremote.vm.guest --desktop --kernel "$kernel" --timeout 3600 \
      --results-dir "$guest_dir" -- python3 -m pytest tests/guest --junitxml=/guest-run/junit-guest.xml
  fi
else
  skip guest-tests "no test kernel"
fi

finish

#!/usr/bin/env bash
# Runs every test layer of BlkTarget: unit and integration suites (xunit), then the end-to-end suite in which
# a real QEMU guest uses the target. Installs what the e2e layer needs (QEMU, fio, a guest kernel) when missing.
# The last line is the total over all layers: "N passed, N failed" (CI counts tests from it).
#
#   ./test.sh            everything
#   ./test.sh --no-e2e   unit + integration only (a quick local loop; CI always runs everything)
set -uo pipefail
cd "$(dirname "$0")"

run_e2e=1
[[ "${1:-}" == "--no-e2e" ]] && run_e2e=0

if ! command -v dotnet >/dev/null; then
  echo "test.sh: the .NET 10 SDK (dotnet) is required" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

passed=0
failed=0
status=0
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
# Names of the tests that failed, in every layer, repeated just above the totals so the tail of a CI log says which.
failures=()

# QEMU, qemu-storage-daemon (the reference peer some integration tests also talk to), zstd, fio and friends.
# A failed install counts as a failure (the tests that need the missing tools fail too, naming them).
echo "== dependencies"
if ! bash tests/e2e/install-deps.sh; then
  echo "installing test dependencies failed"
  failed=$((failed + 1))
  status=1
fi

echo "== build (Release)"
if ! dotnet build BlkTarget.slnx -c Release -nologo -v quiet > "$log_dir/build.log" 2>&1; then
  grep -E "error" "$log_dir/build.log" | sort -u | head -40
  echo "build failed"
  echo "0 passed, $((failed + 1)) failed"
  exit 1
fi

# xunit projects: unit tests first, then integration tests against the real target over real sockets.
for project in tests/BlkTarget.Vhost.Tests tests/BlkTarget.Storage.Tests tests/BlkTarget.Tests tests/BlkTarget.IntegrationTests; do
  echo "== $project"
  dotnet test "$project" -c Release --no-build -nologo 2>&1 | tee "$log_dir/test.log"
  rc=${PIPESTATUS[0]}
  # The runner's summary: "Passed!  - Failed:     0, Passed:    41, Skipped:     0, Total:    41"
  summary=$(grep -E "(Passed|Failed)! +- Failed: +[0-9]+, Passed: +[0-9]+" "$log_dir/test.log" | tail -1)
  if [[ -z "$summary" ]]; then
    echo "no test summary from $project (exit $rc)"
    failed=$((failed + 1))
    status=1
    continue
  fi
  f=$(sed -E 's/.*Failed: +([0-9]+),.*/\1/' <<<"$summary")
  p=$(sed -E 's/.*Passed: +([0-9]+),.*/\1/' <<<"$summary")
  passed=$((passed + p))
  failed=$((failed + f))
  [[ $rc -ne 0 ]] && status=1
  # The runner prints "  Failed Namespace.Class.Method [12 ms]" per failed test.
  while IFS= read -r name; do failures+=("${project#tests/}: $name"); done \
    < <(grep -E "^ +Failed [A-Za-z_]" "$log_dir/test.log" | sed -E 's/^ +Failed //; s/ \[[^]]*\]$//')
done

# One e2e suite run against a fresh target: adds its "e2e: N passed, M failed" line to the totals.
run_e2e_suite() {
  local label=$1; shift
  echo "== end-to-end, $label backend (QEMU guest)"
  bash tests/e2e/run-e2e.sh --target blktarget "$@" 2>&1 | tee "$log_dir/e2e.log"
  local rc=${PIPESTATUS[0]}
  local summary
  summary=$(grep -E "^e2e: [0-9]+ passed, [0-9]+ failed" "$log_dir/e2e.log" | tail -1)
  if [[ -z "$summary" ]]; then
    echo "no e2e summary for the $label run (exit $rc)"
    failed=$((failed + 1))
    status=1
    return
  fi
  passed=$((passed + $(sed -E 's/^e2e: ([0-9]+) passed.*/\1/' <<<"$summary")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$summary")))
  [[ $rc -ne 0 ]] && status=1
  while IFS= read -r name; do failures+=("e2e $label: $name"); done \
    < <(grep -E "^e2e FAIL " "$log_dir/e2e.log" | sed -E 's/^e2e FAIL //')
}

if [[ $run_e2e -eq 1 ]]; then
  export BLKTARGET_CMD="dotnet $PWD/src/BlkTarget/bin/Release/net10.0/blktarget.dll"
  run_e2e_suite ram --backend ram:1G
  # The raw file backend: a sparse 1 GiB file on a real filesystem (O_DIRECT through io_uring).
  image_dir=$(mktemp -d /var/tmp/blktarget-e2e-disks.XXXXXX)
  trap 'rm -rf "$log_dir" "$image_dir"' EXIT
  BLKTARGET_EXTRA_ARGS="--create 1G" run_e2e_suite file --backend "file:$image_dir/disk.img"
  # The sparse image backend, created empty (thin) by the target itself.
  BLKTARGET_EXTRA_ARGS="--create 1G" run_e2e_suite image --backend "image:$image_dir/disk.bti"
  # vhost-user-scsi (2 request queues, /dev/sda in the guest) on a RAM LUN, plus the multi-LUN job, and on an
  # image LUN (asynchronous backend: requests complete from the reactor's io_uring).
  run_e2e_suite "scsi ram" --kind scsi --backend ram:1G
  BLKTARGET_EXTRA_ARGS="--create 1G" run_e2e_suite "scsi image" --kind scsi --only fio-verify,ext4-write,ext4-verify-after-reboot,scsi-commands --backend "image:$image_dir/scsi.bti"
  # Packed virtqueues (packed=on): fio verify, ext4 and a guest reset, over blk and scsi.
  run_e2e_suite "packed ram" --packed --only fio-verify,ext4-write,guest-reboot --backend ram:1G
  run_e2e_suite "packed scsi ram" --packed --kind scsi --only fio-verify,ext4-write,guest-reboot --backend ram:1G
  # The nbd backend: qemu-nbd serving a sparse 1 GiB file on a Unix socket (-t: it stays when a client leaves;
  # --shared=4: multi-conn, one connection per reactor), a small suite (fio verify, ext4). Only the qemu-nbd started
  # here is stopped, by its PID.
  truncate -s 1G "$image_dir/nbd.img"
  qemu-nbd -t -f raw --socket "$image_dir/nbd.sock" --shared=4 --cache=none "$image_dir/nbd.img" >"$log_dir/qemu-nbd.log" 2>&1 &
  nbd_pid=$!
  trap 'kill "$nbd_pid" 2>/dev/null; rm -rf "$log_dir" "$image_dir"' EXIT
  for _ in $(seq 100); do [[ -S "$image_dir/nbd.sock" ]] && break; sleep 0.1; done
  run_e2e_suite nbd --only fio-verify,ext4-write --backend "nbd:nbd+unix:///?socket=$image_dir/nbd.sock"
  kill "$nbd_pid" 2>/dev/null || true
  wait "$nbd_pid" 2>/dev/null || true
  rm -rf "$image_dir"
  # Ceph RBD: run-e2e.sh starts a throwaway one-OSD cluster (bluestore: the OSD is killed and restarted under the
  # guest's fio in rbd-osd-fault), serves an image on it, and stops exactly that cluster at exit.
  run_e2e_suite rbd --backend rbd --only fio-verify,ext4-write,ext4-verify-after-reboot,rbd-osd-fault
fi

[[ $failed -gt 0 ]] && status=1
if [[ ${#failures[@]} -gt 0 ]]; then
  echo "== failed tests"
  printf '  %s\n' "${failures[@]}"
fi
echo "${passed} passed, ${failed} failed"
exit $status

#!/usr/bin/env bash
# Builds BlkTarget (Release) and runs it in the foreground.
#
#   ./run.sh                     serve a 1 GiB RAM disk with 2 queues on /tmp/blktarget.sock
#   ./run.sh serve --config config/single-disk.json
#   ./run.sh serve --socket /tmp/vm1.sock --backend ram:4G --queues 2 --cpus 0-1
#
# Stop it with Ctrl+C (or SIGTERM): in-flight requests finish, the socket file is removed, exit code 0.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v dotnet >/dev/null; then
  echo "run.sh: the .NET 10 SDK (dotnet) is required" >&2
  exit 1
fi
dotnet build src/BlkTarget -c Release -nologo -v quiet >/tmp/blktarget-build.log 2>&1 || { cat /tmp/blktarget-build.log >&2; exit 1; }
if [[ $# -eq 0 ]]; then
  set -- serve --socket /tmp/blktarget.sock --backend ram:1G --queues 2
fi
exec dotnet src/BlkTarget/bin/Release/net10.0/blktarget.dll "$@"

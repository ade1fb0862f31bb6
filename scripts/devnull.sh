#!/usr/bin/env bash
# Checks that /dev/null is the null device (character device 1,3) before cargo runs.
#
#   scripts/devnull.sh          (SKEWLESS_DEVNULL=PATH checks another path: the tests' copy)
#
# Why: cargo asks rustc what it can build by piping /dev/null to it as a source file, and
# build scripts (proc-macro2's) send their probe's stderr to /dev/null. If /dev/null has
# become a regular file, the first probe's error text lands in it and cargo then compiles
# that text: clippy fails with "`#![feature]` may not be used on the stable release channel"
# (E0554) in a crate named `___`, which names nothing of ours. CI failed that way once.
# As root the device is recreated (mknod c 1 3, mode 666); otherwise this stops with the
# command that fixes it.
set -euo pipefail

null=${SKEWLESS_DEVNULL:-/dev/null}
[[ -c $null && "$(stat -c '%t,%T' "$null")" == "1,3" ]] && exit 0

what=$(stat -c '%F, %s bytes' "$null" 2>&1) || what=missing
echo "==> $null is not the null device ($what); cargo's rustc probes read it as source" >&2
if [[ $EUID -eq 0 ]]; then
  rm -f "$null"
  mknod -m 666 "$null" c 1 3
  echo "    recreated it: mknod -m 666 $null c 1 3" >&2
else
  echo "    fix it as root: rm -f $null && mknod -m 666 $null c 1 3" >&2
  exit 1
fi

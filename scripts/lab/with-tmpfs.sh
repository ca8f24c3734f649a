#!/usr/bin/env bash
# with-tmpfs.sh SIZE DIR LISTING CMD...
# Run CMD with a SIZE-limited tmpfs on DIR, in a private mount namespace (the
# mount is invisible outside and vanishes with CMD).  Afterwards the contents
# of DIR are written to LISTING (the tmpfs cannot be inspected later).
set -u
size=$1 dir=$2 listing=$3
shift 3
# shellcheck disable=SC2016 # expanded by the inner bash
exec unshare -m --propagation private bash -c '
    mount -t tmpfs -o size="$1" p2p-lab-tmpfs "$2" || exit 1
    listing=$3
    dir=$2
    shift 3
    "$@"
    rc=$?
    ls -lA "$dir" >"$listing" 2>&1
    exit $rc
' with-tmpfs "$size" "$dir" "$listing" "$@"

#!/usr/bin/env python3
"""Folder trees for the p2pcopy lab.

  tree.py make DIR [--seed N]   create a test tree at DIR (must not exist): a few
                                hundred files (many small, some empty, a few of
                                1-5 MB), nested folders with an empty one, modes
                                0755/0444/0664, a relative in-tree symlink and varied
                                mtimes (nanoseconds; folders set after their contents)
  tree.py listing DIR           one line per entry below DIR (DIR itself excluded),
                                sorted: path, type, mode & 0o755, size, mtime in ns,
                                SHA-256 (files) or target (symlinks).  Two trees are
                                equal for p2pcopy when their listings are.

Only the standard library is used.
"""

import argparse
import hashlib
import os
import random
import stat
import sys

# 2001-09-09 .. 2033-05-18: far from "now", so a time that was not carried over shows.
T_MIN_NS = 1_000_000_000 * 10**9
T_MAX_NS = 2_000_000_000 * 10**9


def rand_ns(rng):
    return rng.randrange(T_MIN_NS, T_MAX_NS)


def write_file(path, size, rng):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def make(root, seed):
    rng = random.Random(seed)
    if os.path.lexists(root):
        sys.exit(f"tree.py: {root} exists")
    os.makedirs(root)
    dirs = [""]
    # Folders: a few levels, one with a space and non-ASCII letters in its name.
    for name in ["docs", "docs/drafts", "src", "src/core", "src/core/deep",
                 "src/core/deep/er", "media", "media/raw files", "data", "data/émigré",
                 "empty-parent", "empty-parent/empty", "top-empty"]:
        os.makedirs(os.path.join(root, name))
        dirs.append(name)
    content_dirs = [d for d in dirs if "empty" not in d]
    files = []
    # Many small files (0..16 KiB), some empty.
    for i in range(300):
        d = rng.choice(content_dirs)
        rel = os.path.join(d, f"small-{i:03d}.dat")
        size = 0 if i % 23 == 0 else rng.choice([1, 17, 100, 511, 4096, 4097, rng.randrange(16384)])
        write_file(os.path.join(root, rel), size, rng)
        files.append(rel)
    # A few medium and a few big ones.
    for i in range(10):
        rel = os.path.join(rng.choice(content_dirs), f"medium-{i}.bin")
        write_file(os.path.join(root, rel), rng.randrange(20_000, 400_000), rng)
        files.append(rel)
    for i, mb in enumerate([1, 2, 5]):
        rel = os.path.join("media/raw files", f"big-{i}.raw")
        write_file(os.path.join(root, rel), mb * 1024 * 1024 + rng.randrange(4096), rng)
        files.append(rel)
    # Modes: default 0644, a few executables, some read-only, some group-writable (the
    # receiver drops group/other write bits).
    for rel in files:
        os.chmod(os.path.join(root, rel), 0o644)
    for rel in rng.sample(files, 5):
        os.chmod(os.path.join(root, rel), 0o755)
    with open(os.path.join(root, "src/run.sh"), "w") as f:
        f.write("#!/bin/sh\necho hello\n")
    os.chmod(os.path.join(root, "src/run.sh"), 0o755)
    files.append("src/run.sh")
    ro = [f for f in files if os.stat(os.path.join(root, f)).st_mode & 0o111 == 0]
    for rel in rng.sample(ro, 8):
        os.chmod(os.path.join(root, rel), 0o444)
    for rel in rng.sample(ro, 4):
        os.chmod(os.path.join(root, rel), 0o664)
    os.chmod(os.path.join(root, "docs/drafts"), 0o750)
    # Relative in-tree symlinks (to a file in another folder, and to a folder).
    os.symlink("../../../media/raw files/big-0.raw", os.path.join(root, "src/core/deep/big-link"))
    os.symlink("docs", os.path.join(root, "docs-link"))
    # Times: files first, then folders deepest first (creating entries bumps a folder's).
    for rel in files:
        t = rand_ns(rng)
        os.utime(os.path.join(root, rel), ns=(t, t))
    for rel in sorted(dirs, key=lambda d: -d.count("/") - (d != "")):
        t = rand_ns(rng)
        os.utime(os.path.join(root, rel), ns=(t, t))
    print(f"made {root}: {len(files)} files, {len(dirs) - 1} folders, 2 links")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def listing(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode) & 0o755
            if stat.S_ISLNK(st.st_mode):
                out.append(f"{rel}\tlink\t-\t-\t-\t{os.readlink(p)}")
            elif stat.S_ISDIR(st.st_mode):
                out.append(f"{rel}\tdir\t{mode:04o}\t-\t{st.st_mtime_ns}\t-")
            elif stat.S_ISREG(st.st_mode):
                out.append(f"{rel}\tfile\t{mode:04o}\t{st.st_size}\t{st.st_mtime_ns}\t{sha256(p)}")
            else:
                out.append(f"{rel}\tother\t{mode:04o}\t-\t-\t-")
    for line in sorted(out):
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=None)
    li = sub.add_parser("listing")
    li.add_argument("dir")
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.dir, a.seed if a.seed is not None else random.randrange(1 << 30))
    else:
        listing(a.dir)


if __name__ == "__main__":
    main()

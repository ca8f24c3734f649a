#!/usr/bin/env python3
"""Timestamp the lines of growing log files (p2pcopy prints its own lines untimed).

  stamp.py OUT STOPFILE MAXSECS NAME=FILE...

Appends "<unix time> NAME: <line>" to OUT for every complete line that appears in
each FILE, polling every 50 ms, until STOPFILE exists (then a last read) or MAXSECS
have passed.  Other writers may append their own "<unix time> lab: ..." lines to
OUT (O_APPEND keeps short lines whole).
"""

import os
import sys
import time


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    out_path, stop, max_secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
    files = [a.split("=", 1) for a in sys.argv[4:]]
    pos = {name: 0 for name, _ in files}
    rest = {name: b"" for name, _ in files}
    end = time.monotonic() + max_secs
    with open(out_path, "ab", buffering=0) as out:
        while True:
            last = os.path.exists(stop) or time.monotonic() > end
            now = time.time()
            for name, path in files:
                try:
                    with open(path, "rb") as f:
                        f.seek(pos[name])
                        data = f.read()
                except OSError:
                    continue
                pos[name] += len(data)
                lines = (rest[name] + data).split(b"\n")
                rest[name] = lines.pop()
                # (a progress bar's \r-separated updates stay on one line)
                for line in lines:
                    out.write(b"%.3f %s: %s\n" % (now, name.encode(), line))
            if last:
                return
            time.sleep(0.05)


if __name__ == "__main__":
    main()

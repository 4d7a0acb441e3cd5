#!/usr/bin/env python3
"""The table `tributary-bench snmp` walks: an snmpd `pass_persist` helper
serving ROWS rows of the first COLUMNS columns of IF-MIB's ifXTable
(1.3.6.1.2.1.31.1.1.1): ifName as text, columns 2-5 as Counter32 and 6 and
up as Counter64, counters that grow with the time, so every walk reads
fresh values. snmpd asks for one varbind at a time (get or getnext, the
OID on the next line) and relays the answer; both clients of the bench walk
the same served rows through the same snmpd.

usage: snmp_table.py ROWS COLUMNS
"""

import bisect
import sys
import time

BASE = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1)


def main():
    rows = int(sys.argv[1])
    columns = int(sys.argv[2])
    oids = [BASE + (c, r) for c in range(1, columns + 1) for r in range(1, rows + 1)]
    texts = ["." + ".".join(map(str, o)) for o in oids]
    start = time.monotonic()

    def value(i):
        column, row = oids[i][-2], oids[i][-1]
        if column == 1:
            return "string", "ge-0/0/%d" % (row - 1)
        grown = int((time.monotonic() - start) * 1000) * (row + column)
        if column <= 5:
            return "counter", str((row * 7919 + grown) % 4294967296)
        return "counter64", str(row * 1000003 + grown)

    out = sys.stdout
    for line in sys.stdin:
        command = line.strip()
        if command == "PING":
            out.write("PONG\n")
        elif command in ("get", "getnext"):
            text = sys.stdin.readline().strip()
            try:
                oid = tuple(int(p) for p in text.strip(".").split("."))
            except ValueError:
                out.write("NONE\n")
                out.flush()
                continue
            if command == "get":
                i = bisect.bisect_left(oids, oid)
                found = i < len(oids) and oids[i] == oid
            else:
                i = bisect.bisect_right(oids, oid)
                found = i < len(oids)
            if found:
                kind, v = value(i)
                out.write("%s\n%s\n%s\n" % (texts[i], kind, v))
            else:
                out.write("NONE\n")
        elif command == "set":
            sys.stdin.readline()
            sys.stdin.readline()
            out.write("not-writable\n")
        elif command == "":
            continue
        else:
            out.write("NONE\n")
        out.flush()


if __name__ == "__main__":
    main()

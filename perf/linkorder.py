"""The link order of the release binary, from callgrind profiles (used by perf/order).

    python3 linkorder.py OUT BINARY PROFILE.cg...

Writes OUT: the functions of BINARY that ran in any PROFILE, one mangled name per line,
by their own instructions summed over the profiles, most first. The profiles are
callgrind outputs recorded with `--demangle=no --dump-instr=no --compress-strings=no`.
"""

import collections
import re
import sys

# A recursive cycle's inner levels are named `name'2`, `name'3`, ...
RECURSION = re.compile(r"'\d+$")


def self_costs(lines, binary):
    """Each function of `binary` → its own instructions (its callees' not included)."""
    cost = collections.Counter()
    ob = fn = None
    call = False
    for line in lines:
        head = line[:1]
        if head.isdigit() or head in "+-*":
            if call:  # the line after `calls=` is that call's inclusive cost
                call = False
            elif fn is not None and ob == binary:
                parts = line.split()
                if len(parts) >= 2:
                    cost[fn] += int(parts[1])
        elif line.startswith("ob="):
            ob = line[3:].strip()
        elif line.startswith("fn="):
            fn = RECURSION.sub("", line[3:].strip())
        elif line.startswith("calls="):
            call = True
    return cost


def order(profiles, binary):
    """Named functions by summed own cost, most first: not bare addresses (`0x…`, code
    without a symbol) nor valgrind's labels (`(below main)`)."""
    total = collections.Counter()
    for lines in profiles:
        total.update(self_costs(lines, binary))
    return [name for name, _ in total.most_common() if not name.startswith(("0x", "("))]


def main(out, binary, paths):
    profiles = []
    for path in paths:
        with open(path, errors="replace") as file:
            profiles.append(file.readlines())
    names = order(profiles, binary)
    with open(out, "w") as file:
        file.write("".join(name + "\n" for name in names))
    print(f"{out}: {len(names)} functions")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

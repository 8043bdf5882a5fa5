"""The link order of the release binary, from callgrind profiles (used by perf/order).

    python3 linkorder.py OUT BINARY PROFILE.cg-NN...

Writes OUT: the functions of BINARY that ran in any PROFILE, one mangled name per line.
The profiles are callgrind outputs recorded with `--separate-threads=yes --demangle=no
--dump-instr=no --compress-strings=no`, one file per thread; a name ending in `-01` is a
process's main thread (start-up: the config, compiling plugins), any other a thread that
serves traffic. First come the functions the serving threads ran, by their own
instructions summed over the profiles, most first: the request paths, packed together.
Then those only start-up ran, the ones more processes (configs) ran first, then by
cost: plain start-up before the plugin compiler, which only a config with a plugin
runs, and which by its instruction count alone would have sat among the hottest.
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


def named(name):
    """Not a bare address (`0x…`, code without a symbol) nor a valgrind label
    (`(below main)`)."""
    return not name.startswith(("0x", "("))


def order(running, binary, startup=()):
    """The functions of the `running` profiles by summed own cost, most first; then
    those only the `startup` profiles ran, by how many of those profiles ran them, then
    by cost."""
    total = collections.Counter()
    for lines in running:
        total.update(self_costs(lines, binary))
    names = [name for name, _ in total.most_common() if named(name)]
    seen = set(names)
    runs, cost = collections.Counter(), collections.Counter()
    for lines in startup:
        costs = self_costs(lines, binary)
        runs.update(costs.keys())
        cost.update(costs)
    rest = [name for name in cost if named(name) and name not in seen]
    rest.sort(key=lambda name: (-runs[name], -cost[name]))
    return names + rest


def main(out, binary, paths):
    running, startup = [], []
    for path in paths:
        with open(path, errors="replace") as file:
            (startup if path.endswith("-01") else running).append(file.readlines())
    names = order(running, binary, startup)
    with open(out, "w") as file:
        file.write("".join(name + "\n" for name in names))
    print(f"{out}: {len(names)} functions")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

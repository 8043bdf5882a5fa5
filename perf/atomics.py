#!/usr/bin/env python3
"""Atomic read-modify-write instructions per request, from a callgrind profile.

    perf/atomics.py PROFILE REQUESTS [TOP]

An instruction count weighs a `lock`-prefixed instruction (`fetch_add`, a
compare-exchange, an `Arc` clone or drop, a mutex) as one, but each costs ~5 ns on
this 2-core EPYC VM: a `fetch_add` loop runs at 5.1 ns per add against 0.26 ns for a
relaxed load and store, and work around it does not hide it. So this counts them:
every executed instruction of the profile whose object's disassembly (objdump) shows
a `lock` prefix or an `xchg` with memory (locked implicitly), per request, with the
functions that run the most. The profile must list instructions
(`valgrind --tool=callgrind --dump-instr=yes`: `perf/instructions --atomics`). JIT
code (a plugin's) has no object file and is not counted.
"""
import collections
import re
import subprocess
import sys

NAMED = re.compile(r"^(c?(?:ob|fn|fl|fi|fe))=\((\d+)\)(?: (.*))?$")
# `cob` names an object as `ob` does, `cfn` a function, `cfi`/`cfl` a file.
NAMESPACE = {"ob": "ob", "fn": "fn", "fl": "fl", "fi": "fl", "fe": "fl"}
ATOMIC = re.compile(r"^\s*([0-9a-f]+):\s+((?:lock\b|xchg\s+\S*\().*)$")


def executed(lines):
    """Self cost per instruction: {(object, address): (count, function)}.

    Follows callgrind's format: names compressed as `(id) name` on first use,
    positions (`instr line`) absolute, `+n`/`-n` relative to the line before, or `*`;
    the line after `calls=` is the call's inclusive cost (skipped, but its address
    still anchors the next relative one)."""
    names = {}
    obj = func = None
    positions = 1
    last = [0, 0]
    skip = False
    cost = collections.Counter()
    where = {}
    for line in lines:
        line = line.rstrip("\n")
        if line.startswith("positions:"):
            positions = len(line.split()[1:])
            continue
        m = NAMED.match(line)
        if m:
            kind, ident, name = m.groups()
            base = kind[1:] if kind.startswith("c") else kind
            key = (NAMESPACE[base], ident)
            if name:
                names[key] = name
            if kind == "ob":
                obj = names.get(key)
            elif kind == "fn":
                func = names.get(key)
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if not line or line[0] not in "0123456789+-*":
            continue
        fields = line.split()
        for i in range(min(positions, len(fields))):
            last[i] = _position(fields[i], last[i])
        if skip:
            skip = False
            continue
        if len(fields) > positions:
            key = (obj, last[0])
            cost[key] += int(fields[positions])
            where[key] = func
    return {key: (count, where[key]) for key, count in cost.items()}


def _position(field, previous):
    if field == "*":
        return previous
    if field[0] in "+-":
        step = int(field[1:], 0)
        return previous + step if field[0] == "+" else previous - step
    return int(field, 0)


def atomic_sites(disassembly):
    """{address: instruction} of the atomic read-modify-writes in objdump -d output."""
    sites = {}
    for line in disassembly.splitlines():
        m = ATOMIC.match(line)
        if m:
            sites[int(m.group(1), 16)] = m.group(2).strip()
    return sites


def count(costs, sites_of):
    """Total atomics executed and their split by function."""
    total = 0
    by_function = collections.Counter()
    for (obj, address), (n, func) in costs.items():
        sites = sites_of(obj)
        if address in sites:
            total += n
            by_function[func] += n
    return total, by_function


def main():
    profile, requests = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    with open(profile, errors="replace") as f:
        costs = executed(f)
    cache = {}

    def sites_of(obj):
        if obj not in cache:
            cache[obj] = {}
            if obj and obj.startswith("/"):
                out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                                     capture_output=True, text=True)
                cache[obj] = atomic_sites(out.stdout)
        return cache[obj]

    total, by_function = count(costs, sites_of)
    print(f"per request: {total / requests:.1f} atomic read-modify-writes (lock-prefixed)")
    for func, n in by_function.most_common(top):
        print(f"  {n / requests:6.2f}  {func}")


if __name__ == "__main__":
    main()

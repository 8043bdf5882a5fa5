"""perf/atomics.py: the callgrind instruction-level parser and the atomic sites.

    python3 -m unittest discover -s perf -p 'test_*.py'

The disassembly is objdump's of Strait's release binary (one function, recorded), plus
three hand-written lines for the `xchg` cases; the profile follows callgrind's format
with `--dump-instr=yes` (compressed names, relative positions, a call's cost line).
"""

import os
import unittest

import atomics

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
STRAIT = "/root/.cache/strait-target/release/strait"


def sample(name):
    with open(os.path.join(TESTDATA, name)) as file:
        return file.read()


class AtomicsTest(unittest.TestCase):
    def test_sites_are_lock_prefixed_or_xchg_with_memory(self):
        sites = atomics.atomic_sites(sample("objdump-atomics.txt"))
        self.assertEqual(
            sites,
            {
                0x37D9F3: "lock incq 0x20(%rax)",
                0x400000: "xchg   %rdx,(%rbx)",
                0x400005: "lock cmpxchg %rcx,0x10(%rdi)",
            },
        )

    def test_costs_follow_relative_positions_and_skip_call_costs(self):
        costs = atomics.executed(sample("callgrind-instr.cg").splitlines())
        clone = "bytes::bytes_mut::shared_v_clone"
        # The lock at +3 ran 10 times in its function and 5 more after `fn=(1)`
        # named it again; libc's instruction at the same offset is another object's.
        self.assertEqual(costs[(STRAIT, 0x37D9F3)], (15, clone))
        self.assertEqual(costs[(STRAIT, 0x37D9F0)], (10, clone))
        self.assertEqual(costs[("/usr/lib/x86_64-linux-gnu/libc.so.6", 0x37D9F3)], (100, "memcpy"))
        # `caller`: 0x400000 and +3, +2 (0x400005); the call's inclusive 40 at `*`
        # (0x400005) is not its own; the next line is +5 from there.
        self.assertEqual(costs[(STRAIT, 0x400000)], (3, "caller"))
        self.assertEqual(costs[(STRAIT, 0x400005)], (7, "caller"))
        self.assertEqual(costs[(STRAIT, 0x40000A)], (1, "caller"))

    def test_count_adds_the_atomic_sites_of_each_object(self):
        costs = atomics.executed(sample("callgrind-instr.cg").splitlines())
        sites = atomics.atomic_sites(sample("objdump-atomics.txt"))
        total, by_function = atomics.count(costs, lambda obj: sites if obj == STRAIT else {})
        self.assertEqual(total, 15 + 3 + 7)
        self.assertEqual(by_function["bytes::bytes_mut::shared_v_clone"], 15)
        self.assertEqual(by_function["caller"], 10)


if __name__ == "__main__":
    unittest.main()

"""Smoke test of the benchmark harness itself (CI runs this; it runs no benchmark).

    python3 -m unittest discover -s perf -p 'test_*.py'

The parsers read real outputs recorded with the tools (perf/testdata/); the rest
checks medians, ratios, the table, the config templates and the scenario table.
"""

import argparse
import contextlib
import json
import os
import re
import tempfile
import unittest

import bench
import linkorder
import parse
import report
import targets
from procs import split_cpus
from scenarios import SCENARIOS

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")


def sample(name):
    with open(os.path.join(TESTDATA, name)) as file:
        return file.read()



def one_run(rps, cpu):
    """One target's figures for one round, as `Bench.load` gives them."""
    return {"rps": rps, "cpu_s_per_10k": cpu, "p99_ms": 1.0, "errors": 0}

class LinkOrder(unittest.TestCase):
    # Recorded from a C program (`leaf` a loop; `fib(6)` recursing down to `leaf`; `main`
    # calling `fib(6)` then `leaf(1000)`), built as /tmp/cgs, under `valgrind
    # --tool=callgrind --demangle=no --dump-instr=no --compress-strings=no`; libc's first
    # function (relative line numbers, `*` lines) kept before it.
    def test_own_cost_of_the_binary_functions_most_first(self):
        lines = sample("callgrind-linkorder.cg").splitlines(keepends=True)
        costs = linkorder.self_costs(lines, "/tmp/cgs")
        # Own cost only: a call's inclusive cost (the line after `calls=`) is not the
        # caller's; the recursion's inner levels (`fib'2`) count as `fib`.
        self.assertEqual(costs["leaf"], 6216)
        self.assertEqual(costs["fib"], 11 + 5 + 4 + 207 + 57 + 55 + 83)
        self.assertEqual(costs["main"], 6 + 3 + 5)
        self.assertNotIn("fib'2", costs)
        # Another object's functions are not the binary's.
        self.assertNotIn("__libc_early_init", costs)
        # ... and are counted for their own object (the sum of the block's cost lines
        # outside its two calls, `__ctype_init` 16 and `getrlimit` 9).
        self.assertEqual(linkorder.self_costs(lines, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
                         {"__libc_early_init": 50})
        self.assertEqual(linkorder.order([lines], "/tmp/cgs"), ["leaf", "fib", "main"])

    def test_profiles_are_summed(self):
        a = ["ob=/bin/x\n", "fn=f\n", "0 10\n", "fn=g\n", "0 30\n"]
        b = ["ob=/bin/x\n", "fn=f\n", "0 25\n", "fn=0x1000\n", "0 99\n"]
        self.assertEqual(linkorder.order([a, b], "/bin/x"), ["f", "g"])
        self.assertEqual(linkorder.order([a, b], "/bin/y"), [])

    def test_serving_threads_first_then_start_up_by_reach(self):
        worker = ["ob=/bin/x\n", "fn=serve\n", "0 10\n", "fn=parse\n", "0 30\n"]
        # Two processes' main threads: `compile` (one config only) costs the most,
        # `load` ran in both, `parse` also ran on a worker.
        main1 = ["ob=/bin/x\n", "fn=load\n", "0 5\n", "fn=compile\n", "0 900\n",
                 "fn=parse\n", "0 1\n"]
        main2 = ["ob=/bin/x\n", "fn=load\n", "0 5\n", "fn=bind\n", "0 2\n"]
        self.assertEqual(linkorder.order([worker], "/bin/x", [main1, main2]),
                         ["parse", "serve", "load", "compile", "bind"])


class Options(unittest.TestCase):
    def test_strait_binary_must_be_executable(self):
        with tempfile.NamedTemporaryFile() as file:
            os.chmod(file.name, 0o755)
            self.assertEqual(bench.parse_args(["--strait", file.name]).strait, file.name)
            os.chmod(file.name, 0o644)
            with self.assertRaises(SystemExit), open(os.devnull, "w") as null, \
                    contextlib.redirect_stderr(null):
                bench.parse_args(["--strait", file.name])

    def test_strait_and_pgo_exclude_each_other(self):
        with tempfile.NamedTemporaryFile() as file:
            os.chmod(file.name, 0o755)
            with self.assertRaises(SystemExit), open(os.devnull, "w") as null, \
                    contextlib.redirect_stderr(null):
                bench.parse_args(["--strait", file.name, "--pgo"])
        self.assertTrue(bench.parse_args(["--pgo"]).pgo)


class ParseWrk(unittest.TestCase):
    def test_keepalive(self):
        got = parse.parse_wrk(sample("wrk-keepalive.txt"))
        self.assertEqual(got["requests"], 108778)
        self.assertAlmostEqual(got["rps"], 54229.40)
        self.assertAlmostEqual(got["p50_ms"], 0.535)
        self.assertAlmostEqual(got["p99_ms"], 7.52)
        self.assertEqual(got["errors"], 0)

    def test_bodies_and_close(self):
        bodies = parse.parse_wrk(sample("wrk-bodies.txt"))
        self.assertEqual((bodies["requests"], bodies["errors"]), (36825, 0))
        self.assertAlmostEqual(bodies["p99_ms"], 5.61)
        close = parse.parse_wrk(sample("wrk-close.txt"))
        self.assertEqual((close["requests"], close["errors"]), (29346, 0))
        self.assertAlmostEqual(close["p50_ms"], 2.03)

    def test_non_2xx_and_socket_errors_count(self):
        self.assertEqual(parse.parse_wrk(sample("wrk-non2xx.txt"))["errors"], 80174)
        # 5939 non-2xx responses + 11877 read errors
        self.assertEqual(parse.parse_wrk(sample("wrk-errors.txt"))["errors"], 5939 + 11877)

    def test_garbage_is_refused(self):
        with self.assertRaises(ValueError):
            parse.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


class ParseH2load(unittest.TestCase):
    def test_summary(self):
        got = parse.parse_h2load(sample("h2load.txt"))
        self.assertEqual(got["requests"], 83734)
        self.assertAlmostEqual(got["rps"], 41867.0)
        self.assertEqual(got["errors"], 0)
        self.assertIsNone(got["p99_ms"])

    def test_percentiles_from_log(self):
        got = parse.parse_h2load(sample("h2load-64k.txt"), sample("h2load-64k.log"))
        self.assertEqual((got["requests"], got["errors"]), (2000, 0))
        # h2load printed min 198us, max 13.72ms for the same run
        self.assertTrue(0.198 <= got["p50_ms"] <= got["p99_ms"] <= 13.72, got)

    def test_refused_connections_are_errors(self):
        got = parse.parse_h2load(sample("h2load-refused.txt"))
        self.assertEqual((got["requests"], got["errors"]), (0, 100))

    def test_percentile(self):
        values = list(range(1, 101))
        self.assertEqual(parse.percentile(values, 50), 50)
        self.assertEqual(parse.percentile(values, 99), 99)
        self.assertEqual(parse.percentile([7], 99), 7)
        self.assertIsNone(parse.percentile([], 50))


class ParseOha(unittest.TestCase):
    def test_open_loop_json(self):
        # oha -z 2s -q 2000 --latency-correction; 2 requests "aborted due to deadline"
        got = parse.parse_oha(sample("oha.json"))
        self.assertEqual((got["requests"], got["errors"]), (4000, 0))
        self.assertAlmostEqual(got["rps"], 1999.05, places=2)
        self.assertAlmostEqual(got["p50_ms"], 0.219276)
        self.assertAlmostEqual(got["p99_ms"], 3.610779)

    def test_real_errors_count(self):
        data = json.loads(sample("oha.json"))
        data["statusCodeDistribution"] = {"200": 3990, "502": 10}
        data["errorDistribution"]["connection refused"] = 5
        self.assertEqual(parse.parse_oha(json.dumps(data))["errors"], 15)


class Report(unittest.TestCase):
    def test_median_and_ratio(self):
        self.assertEqual(report.median([3, 1, 2]), 2)
        self.assertEqual(report.median([4, None, 1, 2, 3]), 2.5)
        self.assertIsNone(report.median([None]))
        self.assertEqual(report.ratio(3, 2), 1.5)
        self.assertIsNone(report.ratio(3, 0))
        self.assertIsNone(report.ratio(None, 2))

    def test_summarize_takes_medians_and_sums_errors(self):
        got = report.summarize([{"rps": 10, "errors": 0}, {"rps": 30, "errors": 2},
                                {"rps": 20, "errors": 1}])
        self.assertEqual(got, {"rps": 20, "errors": 3, "rounds": 3})

    def _summary(self):
        def row(rps, cpu):
            return {"rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_s_per_10k": cpu,
                    "rss_idle": 10 * report.MIB, "rss_load": 12 * report.MIB,
                    "errors": 0}
        load = {"strait": row(20000, 0.2), "envoy": row(10000, 0.4),
                "nginx": row(16000, 0.25), "haproxy": row(25000, 0.1),
                "direct": {"rps": 40000, "p50_ms": 0.5, "p99_ms": 1.0, "errors": 0}}
        idle = {t: {"ok": 5000, "rss_before": 0, "rss_after": 5000 * b,
                    "bytes_per_conn": b, "errors": 0}
                for t, b in (("strait", 2000), ("envoy", 4000), ("nginx", 500),
                             ("haproxy", 1000))}
        return {"h1-keepalive": load, "idle-5k": idle}

    def test_markdown_has_ratios(self):
        meta = {"date": "2026-01-01 00:00 UTC", "machine": "2 cores", "command": "perf/run",
                "workers": 1, "rounds": 3, "duration": 3, "pinning": "none",
                "docs": {"h1-keepalive": "tiny", "idle-5k": "idle"}}
        text = report.markdown(meta, self._summary(),
                               {"h1-keepalive": "load", "idle-5k": "idle"})
        # Strait ÷ Envoy, NGINX, HAProxy for req/s and bytes per idle connection
        self.assertIn("| h1-keepalive | req/s ↑ | 2.00 | 1.25 | 0.80 |", text)
        self.assertIn("| idle-5k | RSS per idle connection ↓ | 0.50 | 4.00 | 2.00 |", text)
        # each target ÷ direct
        self.assertRegex(text, r"\| Strait \| 20,000 \| 0\.50 \|")
        self.assertRegex(text, r"\| direct \| 40,000 \| 1\.00 \|")
        for line in text.splitlines():
            if line.startswith("|"):
                self.assertTrue(line.endswith("|"), line)
        self.assertNotIn("open loop", text)

    def test_open_loop_p99_is_a_summary_row(self):
        meta = {"date": "d", "machine": "m", "command": "perf/run --latency",
                "workers": 1, "rounds": 3, "duration": 3, "pinning": "none",
                "docs": {"h1-keepalive": "tiny", "idle-5k": "idle"}}
        open_loop = {"h1-keepalive": {
            t: {"rate": 5000, "rps": 5000, "p50_ms": 0.3, "p99_ms": p99, "errors": 0}
            for t, p99 in (("strait", 1.0), ("envoy", 4.0), ("nginx", 0.8),
                           ("haproxy", 2.0), ("direct", 0.5))}}
        text = report.markdown(meta, self._summary(),
                               {"h1-keepalive": "load", "idle-5k": "idle"}, open_loop)
        lines = text.splitlines()
        closed = lines.index("| h1-keepalive | p99 ↓ | 1.00 | 1.00 | 1.00 |")
        self.assertEqual(lines[closed + 1],
                         "| h1-keepalive | p99, open loop ↓ | 0.25 | 1.25 | 0.50 |")
        self.assertIn("**h1-keepalive**, open loop (oha -q, latency-corrected)", text)

    def _plain_summary(self):
        def row(rps):
            return {"rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "cpu_s_per_10k": 0.3,
                    "rss_idle": report.MIB, "rss_load": report.MIB, "errors": 0}
        return {"strait": row(18000), "envoy": row(8000), "strait-plain": row(20000),
                "envoy-plain": row(10000), "direct": row(40000)}

    def test_plain_figures(self):
        got = report.plain_figures(self._plain_summary())
        self.assertAlmostEqual(got["kept"]["strait"], 0.9)
        self.assertAlmostEqual(got["loss"]["envoy"], 0.2)
        self.assertAlmostEqual(got["loss_ratio"], 0.5)  # 10% ÷ 20%
        self.assertAlmostEqual(got["strait_with_vs_envoy_without"], 1.8)
        self.assertAlmostEqual(got["cpu"]["strait"], 1.0)
        self.assertAlmostEqual(got["cost_us"]["strait"], 0.0)
        costly = self._plain_summary()
        costly["strait"]["cpu_s_per_10k"] = 0.32  # +2 µs per request
        costly["envoy"]["cpu_s_per_10k"] = 0.34   # +4 µs
        got = report.plain_figures(costly)
        self.assertAlmostEqual(got["cost_us"]["strait"], 2.0)
        self.assertAlmostEqual(got["cost_ratio"], 0.5)
        faster = self._plain_summary()
        faster["envoy"]["rps"] = 11000  # Envoy "gained": no meaningful loss ratio
        self.assertIsNone(report.plain_figures(faster)["loss_ratio"])
        # Envoy's loss and µs within the noise: no quotient by them either.
        level = self._plain_summary()
        level["envoy"]["rps"] = 9970
        level["envoy"]["cpu_s_per_10k"] = level["envoy-plain"]["cpu_s_per_10k"] + 0.0005
        got = report.plain_figures(level)
        self.assertIsNone(got["loss_ratio"])
        self.assertIsNone(got["cost_ratio"])

    def test_pairs_compare_each_round_with_its_own_plain_run(self):
        run = one_run
        # Round 2 is a slow spell for the plugin's run only, round 3 for both runs of
        # the pair: the medians taken apart say 25% lost, the pairs 10%.
        rounds = {"h1-wasm": {
            "strait": [run(90, 0.10), run(60, 0.15), run(54, 0.15)],
            "strait-plain": [run(100, 0.09), run(100, 0.09), run(60, 0.135)],
            "envoy": [run(40, 0.30)] * 3, "envoy-plain": [run(50, 0.25)] * 3,
            "direct": [run(200, None)] * 3}}
        summary = report.summarize_all(rounds)
        strait = summary["h1-wasm"]["strait"]
        self.assertEqual(strait["rps"], 60)
        self.assertAlmostEqual(strait["paired_kept"], 0.9)
        self.assertAlmostEqual(strait["paired_cpu"], 0.15 / 0.135)
        self.assertAlmostEqual(strait["paired_cost_us"], 1.5)
        self.assertNotIn("paired_kept", summary["h1-wasm"]["direct"])
        got = report.plain_figures(summary["h1-wasm"])
        self.assertAlmostEqual(got["loss"]["strait"], 0.1)
        self.assertAlmostEqual(got["loss"]["envoy"], 0.2)
        self.assertAlmostEqual(got["loss_ratio"], 0.5)
        self.assertAlmostEqual(got["cost_ratio"], 1.5 / 5.0)
        meta = {"date": "d", "machine": "m", "command": "perf/run", "workers": 1,
                "rounds": 3, "duration": 3, "pinning": "none",
                "docs": {"h1-wasm": "wasm"}}
        text = report.markdown(meta, summary, {"h1-wasm": "load"})
        self.assertIn("median of each round's back-to-back pair", text)
        self.assertIn("| Strait | 60 | 100 | 0.90 | 10.0% | 1.11 | 1.50 |", text)

    def test_peer_ratios_are_the_median_of_each_rounds_ratio(self):
        run = one_run
        # Round 1 is a slow spell for both runs of the pair, round 3 for HAProxy's
        # run only: the medians taken apart say 0.90 and 1.11, the rounds 1.0 and 1.0.
        rounds = {"h1-keepalive": {
            "strait": [run(60, 0.15), run(90, 0.10), run(100, 0.09)],
            "haproxy": [run(60, 0.15), run(90, 0.10), run(70, 0.13)],
            "nginx": [run(45, 0.20)] * 3, "envoy": [run(30, 0.30)] * 3,
            "direct": [run(120, None)] * 3}}
        summary = report.summarize_all(rounds)
        self.assertAlmostEqual(summary["h1-keepalive"]["haproxy"]["rps"], 70)
        over = summary["h1-keepalive"]["haproxy"]["strait_over"]
        self.assertAlmostEqual(over["rps"], 1.0)
        self.assertAlmostEqual(over["cpu_s_per_10k"], 1.0)
        self.assertIsNone(over["bytes_per_conn"])
        self.assertNotIn("strait_over", summary["h1-keepalive"]["direct"])
        self.assertNotIn("strait_over", summary["h1-keepalive"]["strait"])
        text = "\n".join(report.summary_table(summary, {"h1-keepalive": "load"}))
        self.assertIn("| h1-keepalive | req/s ↑ | 3.00 | 2.00 | 1.00 |", text)
        self.assertIn("| h1-keepalive | CPU per request ↓ | 0.33 | 0.50 | 1.00 |", text)
        # A summary without the rounds (an older JSON) falls back to the medians.
        del summary["h1-keepalive"]["haproxy"]["strait_over"]
        text = "\n".join(report.summary_table(summary, {"h1-keepalive": "load"}))
        self.assertIn("| h1-keepalive | req/s ↑ | 3.00 | 2.00 | 1.29 |", text)

    def test_markdown_plain_scenario(self):
        meta = {"date": "d", "machine": "m", "command": "perf/run", "workers": 1,
                "rounds": 3, "duration": 3, "pinning": "none",
                "docs": {"h1-wasm": "wasm"}, "goals": {"h1-wasm": "Strait ≤ ½"},
                "load": [1.5, 0.25]}
        text = report.markdown(meta, {"h1-wasm": self._plain_summary()},
                               {"h1-wasm": "load"})
        self.assertIn("; load average 1.50 before, 0.25 after.", text)
        self.assertIn("| h1-wasm | req/s ↑ | 2.25 | n/a | n/a |", text)
        self.assertIn("| NGINX | n/a | n/a |", text)
        self.assertIn("| Strait, plain route | 20,000 | 0.50 |", text)
        self.assertIn("| Strait | 18,000 | 20,000 | 0.90 | 10.0% | 1.00 | 0.00 |", text)
        self.assertIn("| Envoy | 8,000 | 10,000 | 0.80 | 20.0% | 1.00 | 0.00 |", text)
        self.assertIn("Strait loss ÷ Envoy loss: **0.50**; Strait with ÷ Envoy plain: "
                      "**1.80** (goal: Strait ≤ ½); the feature's CPU per request, "
                      "Strait ÷ Envoy: **–**", text)

    def test_errors_are_totalled(self):
        summary = self._summary()
        self.assertEqual(report.total_errors(summary), 0)
        summary["h1-keepalive"]["nginx"]["errors"] = 4
        self.assertEqual(report.total_errors(summary), 4)


class Configs(unittest.TestCase):
    VALUES = {"workers": 1, "tmp": "/tmp/x", "port": 1, "h2_port": 2, "backend_port": 3,
              "nofile": 20000, "worker_connections": 19000, "maxconn": 9000,
              "wasm": "/tmp/x/p.wasm"}

    def test_every_template_renders_completely(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name in os.listdir(targets.CONFIGS):
                out = targets.render(name, os.path.join(tmp, name), **self.VALUES)
                with open(out) as file:
                    self.assertNotRegex(file.read(), r"\{\{\w+\}\}", name)

    def test_missing_value_is_an_error(self):
        with tempfile.TemporaryDirectory() as tmp, self.assertRaises(KeyError):
            targets.render("haproxy.cfg", os.path.join(tmp, "h.cfg"), workers=1)

    def test_shared_bootstrap_has_no_logging_and_auto_codec(self):
        with tempfile.TemporaryDirectory() as tmp:
            with open(targets.render_bootstrap(tmp, 8080)) as file:
                text = file.read()
        body = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
        self.assertNotIn("access_log", body)
        self.assertIn("codec_type: AUTO", body)
        self.assertIn("port_value: 8080", body)


    def test_variants_differ_from_plain_only_by_their_feature(self):
        with tempfile.TemporaryDirectory() as tmp:
            def text(template, **kw):
                with open(targets.render_bootstrap(tmp, 8080, template, **kw)) as file:
                    return [l for l in file.read().splitlines() if not l.startswith("#")]
            plain = text("envoy.yaml")
            wasm = text("envoy-wasm.yaml", wasm="/p/perf_header.wasm")
            resilience = text("envoy-resilience.yaml")
        added = [l.strip() for l in wasm if l not in plain]
        self.assertIn("- name: envoy.filters.http.wasm", added)
        self.assertIn("runtime: envoy.wasm.runtime.v8", added)
        self.assertIn("filename: /p/perf_header.wasm", added)
        self.assertTrue(all(l in wasm for l in plain))  # nothing else changed
        # the wasm filter comes before the router
        names = [l.strip() for l in wasm if l.strip().startswith("- name: envoy.filters.http")]
        self.assertEqual(names, ["- name: envoy.filters.http.wasm",
                                 "- name: envoy.filters.http.router"])
        body = "\n".join(resilience)
        self.assertIn("retry_policy: { retry_on: 5xx, num_retries: 2 }", body)
        self.assertIn("interval: 1s", body)
        self.assertIn("http_health_check: { path: / }", body)


class Scenarios(unittest.TestCase):
    def test_table(self):
        self.assertEqual(list(SCENARIOS), ["h1-keepalive", "h1-wasm", "h1-resilience",
                                           "h1-bodies", "h1-close", "h2", "h2-64k",
                                           "idle-5k"])
        for scenario in SCENARIOS.values():
            self.assertTrue(os.path.exists(os.path.join(targets.CONFIGS, scenario.bootstrap)))
            if scenario.plugin:
                crate = os.path.join(os.path.dirname(targets.CONFIGS), "plugins",
                                     scenario.plugin)
                self.assertTrue(os.path.exists(os.path.join(crate, "Cargo.toml")), crate)
            for name in scenario.only or ():
                self.assertIn(name, report.TARGETS)
            self.assertIn(scenario.tool, ("wrk", "h2load", "idle"))
            self.assertIn(scenario.path, ("/", "/64k"))
            for arg in scenario.args:
                if arg.endswith(".lua"):
                    self.assertTrue(os.path.exists(arg), arg)

    def test_scenario_targets(self):
        shared = [targets.Target(n, i, i) for i, n in enumerate(
            ("strait", "envoy", "nginx", "haproxy", "direct"))]
        started = []

        def start(name):
            started.append(name)
            return targets.Target(name, 100 + len(started), 100 + len(started))

        order, own = bench.scenario_targets(SCENARIOS["h1-keepalive"], shared, start)
        self.assertEqual((order, own, started), (shared, [], []))
        order, own = bench.scenario_targets(SCENARIOS["h1-wasm"], shared, start)
        self.assertEqual([t.name for t in order], ["strait", "strait-plain", "envoy",
                                                   "envoy-plain", "direct"])
        self.assertEqual([t.h1_port for t in order], [101, 0, 102, 1, 4])
        self.assertEqual([t.h1_port for t in own], [101, 102])
        self.assertEqual(started, ["strait", "envoy"])

    def test_load_commands(self):
        args = argparse.Namespace(duration=None, quick=True, rounds=3)
        runner = bench.Bench(args, "/tmp/x", [1], None)
        target = targets.Target("nginx", 1000, 1001)
        argv = runner.load_argv(SCENARIOS["h1-close"], target, 3, "/tmp/x/log", None)
        self.assertEqual(argv[:5], ["wrk", "-t1", "-c50", "-d3s", "--latency"])
        self.assertIn("Connection: close", argv)
        self.assertEqual(argv[-1], "http://127.0.0.1:1000/")
        argv = runner.load_argv(SCENARIOS["h2-64k"], target, 3, "/tmp/x/log", None)
        self.assertEqual(argv[0], "h2load")
        self.assertIn("-m10", argv)
        self.assertEqual(argv[-1], "http://127.0.0.1:1001/64k")  # NGINX's h2c port
        argv = runner.load_argv(SCENARIOS["h1-bodies"], target, 3, "/tmp/x/log", 500)
        self.assertIn("--latency-correction", argv)
        self.assertEqual(argv[argv.index("-q") + 1], "500")
        self.assertTrue(re.fullmatch(r"x{4096}", argv[argv.index("-d") + 1]))


class Cpus(unittest.TestCase):
    def test_split(self):
        self.assertEqual(split_cpus({0, 1}, 1), ([0], [1]))
        self.assertEqual(split_cpus(range(8), 4), ([0, 1, 2, 3], [4, 5, 6, 7]))
        self.assertEqual(split_cpus({0, 1}, 2), ([], []))  # no room: nothing pinned


if __name__ == "__main__":
    unittest.main()

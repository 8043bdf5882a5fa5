"""perf/run: benchmark Strait against Envoy, NGINX and HAProxy (see perf/README.md).

Start one backend and the four proxies once, then for each scenario: a warm-up run
per target, then `rounds` rounds in which every target runs once, always in the same
order (Strait, Envoy, NGINX, HAProxy, direct). Medians over rounds go to a Markdown
table on stdout and, with every round's raw figures, to perf/results/*.json.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time

import install
import parse
import report
import targets
from procs import Group, cpu_seconds, pinned, rss_bytes, split_cpus, stop
from scenarios import SCENARIOS

PERF = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(PERF, "results")
# Seconds between the idle-5k client's last response and the RSS reading.
IDLE_SETTLE = 3.0
log = install.log


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="perf/run", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker threads/processes for every proxy (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (≥3)")
    parser.add_argument("--quick", action="store_true",
                        help="3 s runs, 1 s warm-up (default 10 s runs, 3 s warm-up)")
    parser.add_argument("--duration", type=int, help="seconds per run (overrides --quick)")
    parser.add_argument("--latency", action="store_true",
                        help="also measure open-loop latency with oha -q (needs oha)")
    parser.add_argument("--strait", metavar="BINARY",
                        help="measure this strait binary (e.g. perf/pgo's) instead of the "
                             "release build; implies no cargo build of strait")
    parser.add_argument("--pgo", action="store_true",
                        help="measure the profile-guided build (perf/pgo: two release "
                             "builds and a profiling run first)")
    parser.add_argument("--no-build", action="store_true",
                        help="use the existing release binary, do not run cargo build")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.workers < 1:
        parser.error("--rounds and --workers must be at least 1")
    if args.strait and not os.access(args.strait, os.X_OK):
        parser.error(f"--strait {args.strait}: not an executable file")
    if args.strait and args.pgo:
        parser.error("--strait and --pgo both name the binary to measure; give one")
    return args


def raise_fd_limit():
    """Soft RLIMIT_NOFILE up to the hard limit (idle-5k needs ~10k descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return min(soft, 1 << 20)


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}"


def restartable(group, start):
    """Start a proxy; its `restart` stops it and starts a fresh one in its place."""
    target = start()

    def restart():
        group.stop_one(target.proc)
        return restartable(group, start)

    target.restart = restart
    return target


class Bench:
    def __init__(self, args, tmp, load_cpus, oha):
        self.args, self.tmp, self.load_cpus, self.oha = args, tmp, load_cpus, oha
        self.threads = max(1, len(load_cpus) or os.cpu_count())
        self.duration = args.duration or (3 if args.quick else 10)
        self.warmup = 1 if args.quick else 3
        self.runs = 0

    # One run of a load generator against one target --------------------------------

    def load(self, scenario, target, duration, oha_rate=None):
        """Run the scenario's load once; returns the parsed figures plus CPU and RSS."""
        self.runs += 1
        out_path = os.path.join(self.tmp, f"load-{self.runs}.out")
        log_path = os.path.join(self.tmp, f"load-{self.runs}.log")
        argv = self.load_argv(scenario, target, duration, log_path, oha_rate)
        pid = target.proc.pid if target.proc else None
        cpu_before = cpu_seconds(pid) if pid else None
        rss_idle = rss_bytes(pid) if pid else None
        rss_peak = 0
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(pinned(self.load_cpus, argv), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + duration + 30
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not finish: {' '.join(argv)}")
                if pid:
                    rss_peak = max(rss_peak, rss_bytes(pid))
                time.sleep(0.25)
        finally:
            stop(proc)
        cpu_after = cpu_seconds(pid) if pid else None
        with open(out_path) as file:
            text = file.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{text}")
        if oha_rate is not None:
            figures = parse.parse_oha(text)
            figures["rate"] = oha_rate
        elif scenario.tool == "wrk":
            figures = parse.parse_wrk(text)
        else:
            with open(log_path) as file:
                figures = parse.parse_h2load(text, file.read())
            os.unlink(log_path)
        if pid:
            requests = figures["requests"] or 1
            figures["cpu_s_per_10k"] = (cpu_after - cpu_before) / requests * 10_000
            figures["rss_idle"] = rss_idle
            figures["rss_load"] = rss_peak or None
        return figures

    def load_argv(self, scenario, target, duration, log_path, oha_rate):
        conns = scenario.connections
        threads = min(self.threads, conns)
        if oha_rate is not None:
            url = f"http://127.0.0.1:{target.h1_port}{scenario.path}"
            return [self.oha, "-z", f"{duration}s", "-c", str(conns), "-q", str(oha_rate),
                    "--latency-correction", "--no-tui", "--output-format", "json",
                    *scenario.oha, url]
        if scenario.tool == "wrk":
            url = f"http://127.0.0.1:{target.h1_port}{scenario.path}"
            return ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency",
                    "--timeout", "5s", *scenario.args, url]
        if scenario.tool == "h2load":
            url = f"http://127.0.0.1:{target.h2_port}{scenario.path}"
            return ["h2load", f"-t{threads}", f"-c{conns}", f"-D{duration}",
                    f"--log-file={log_path}", *scenario.args, url]
        raise ValueError(f"unknown tool {scenario.tool}")

    # idle-5k ------------------------------------------------------------------------

    def idle(self, scenario, target):
        """Open the connections, measure RSS before and after, close them.

        The target is restarted first: memory freed by earlier scenarios stays in the
        allocator and would hide the cost of new connections.
        """
        if target.restart:
            target = target.restart()
        pid = target.proc.pid if target.proc else None
        rss_before = rss_bytes(pid) if pid else None
        argv = [sys.executable, os.path.join(PERF, "idle_client.py"),
                str(target.h1_port), str(scenario.connections), scenario.path]
        proc = subprocess.Popen(pinned(self.load_cpus, argv), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            line = proc.stdout.readline() if ready else b""
            if not line:
                raise RuntimeError(f"idle client gave no result for {target.name}")
            figures = json.loads(line)
            # Idle means idle: past the responses' bookkeeping, and past the second
            # after which a proxy may release an idle connection's buffers (Strait
            # does, at 1-2 s of quiet; HAProxy and NGINX at once). The same wait
            # for every proxy.
            time.sleep(IDLE_SETTLE)
            rss_after = rss_bytes(pid) if pid else None
            proc.stdin.write(b"close\n")
            proc.stdin.close()
            proc.wait(timeout=30)
        finally:
            stop(proc)
        if pid:
            figures.update(rss_before=rss_before, rss_after=rss_after,
                           bytes_per_conn=(rss_after - rss_before) / max(1, figures["ok"]))
        return figures, target

    # Interleaving -------------------------------------------------------------------

    def scenario(self, scenario, order):
        rounds = {t.name: [] for t in order}
        if scenario.tool != "idle":
            for target in order:
                self.load(scenario, target, self.warmup)
        for number in range(1, self.args.rounds + 1):
            for index, target in enumerate(order):
                if scenario.tool == "idle":
                    figures, order[index] = self.idle(scenario, target)
                    shown = f"{figures.get('bytes_per_conn') or 0:,.0f} B/conn"
                else:
                    figures = self.load(scenario, target, self.duration)
                    shown = f"{figures['rps']:,.0f} req/s"
                rounds[target.name].append(figures)
                log(f"{scenario.name} round {number}/{self.args.rounds} {target.name}: "
                    f"{shown}, {figures['errors']} errors")
        return rounds

    def open_loop(self, scenario, order, closed):
        """oha at half the slowest target's closed-loop rate, same interleaving."""
        slowest = min(report.median([r["rps"] for r in runs]) for runs in closed.values())
        rate = max(1, int(slowest * 0.5))
        rounds = {t.name: [] for t in order}
        for number in range(1, self.args.rounds + 1):
            for target in order:
                figures = self.load(scenario, target, self.duration, oha_rate=rate)
                rounds[target.name].append(figures)
                log(f"{scenario.name} open-loop round {number} {target.name}: "
                    f"p99 {figures['p99_ms'] or 0:.2f} ms at {rate} req/s")
        return rounds


def scenario_targets(scenario, shared, start):
    """The targets a scenario runs, in order, and the ones started for it alone.

    `shared` are Strait, Envoy, NGINX, HAProxy (plain bootstrap) and direct;
    `start(name)` starts a Strait or Envoy on the scenario's own bootstrap. With
    `plain`, the shared Strait and Envoy run too, as "strait-plain"/"envoy-plain",
    each right after the same proxy with the feature: Strait, Strait plain, Envoy,
    Envoy plain, direct. Back to back, the two runs of a pair mostly see the host in
    the same state, and the report compares each round's pair (`report.paired`).
    """
    wanted = set(scenario.only or report.TARGETS)
    own = {}
    if scenario.bootstrap != "envoy.yaml":
        own = {t.name: start(t.name) for t in shared
               if t.name in report.PLAIN and t.name in wanted}
    order = []
    for t in shared:
        if t.name not in wanted or t.name == "direct":
            continue
        order.append(own.get(t.name, t))
        if scenario.plain and t.name in report.PLAIN:
            order.append(dataclasses.replace(t, name=f"{t.name}-plain"))
    order += [t for t in shared if t.name == "direct" and t.name in wanted]
    return order, list(own.values())


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    scenarios = [SCENARIOS[n] for n in args.scenario] if args.scenario else list(
        SCENARIOS.values())
    load_before = os.getloadavg()
    nofile = raise_fd_limit()
    install.ensure_apt_tools()
    envoy = install.ensure_envoy()
    # Plugins first: perf/pgo profiles the proxy-wasm host with one.
    plugins = {s.plugin: install.build_plugin(s.plugin, build=not args.no_build)
               for s in scenarios if s.plugin}
    if args.pgo:
        strait = install.build_strait_pgo()
    else:
        strait = args.strait or install.build_strait(build=not args.no_build)
    oha = install.ensure_oha() if args.latency else None
    if args.latency and not oha:
        log("--latency: oha could not be installed (cargo install oha); "
            "open-loop pass skipped")

    proxy_cpus, load_cpus = split_cpus(os.sched_getaffinity(0), args.workers)
    pinning = (f"proxies on CPU {','.join(map(str, proxy_cpus))}, load generator and "
               f"backend on CPU {','.join(map(str, load_cpus))} (taskset)"
               if proxy_cpus else "no CPU pinning (not enough cores)")
    tmp = tempfile.mkdtemp(prefix="strait-perf-")
    os.chmod(tmp, 0o755)  # nginx workers run as an unprivileged user and read www/
    group = Group()
    try:
        backend = targets.start_backend(group, tmp, load_cpus, max(1, len(load_cpus)),
                                        nofile)
        bootstrap = targets.render_bootstrap(tmp, backend.h1_port)
        starters = {
            "strait": lambda: targets.start_envoy_like(
                group, tmp, "strait", strait, bootstrap, proxy_cpus, args.workers),
            "envoy": lambda: targets.start_envoy_like(
                group, tmp, "envoy", envoy, bootstrap, proxy_cpus, args.workers),
            "nginx": lambda: targets.start_nginx(
                group, tmp, proxy_cpus, args.workers, backend.h1_port, nofile),
            "haproxy": lambda: targets.start_haproxy(
                group, tmp, proxy_cpus, args.workers, backend.h1_port, nofile),
        }
        order = [restartable(group, starters[name])
                 for name in report.RUN_ORDER] + [backend]
        log(pinning)
        bench = Bench(args, tmp, load_cpus, oha)
        raw, open_raw = {}, {}
        binaries = {"strait": strait, "envoy": envoy}
        for scenario in scenarios:
            own_bootstrap = bootstrap if scenario.bootstrap == "envoy.yaml" else (
                targets.render_bootstrap(tmp, backend.h1_port, scenario.bootstrap,
                                         plugins.get(scenario.plugin)))

            def start(name, scenario=scenario, own_bootstrap=own_bootstrap):
                return targets.start_envoy_like(group, tmp, name, binaries[name],
                                                own_bootstrap, proxy_cpus, args.workers,
                                                tag=f"-{scenario.name}")

            runs, own = scenario_targets(scenario, order, start)
            try:
                for target in own if scenario.expect else ():
                    targets.check_header(target.h1_port, scenario.path, *scenario.expect)
                raw[scenario.name] = bench.scenario(scenario, runs)
                # idle-5k restarts the shared proxies: later scenarios use the new ones
                fresh = {t.name: t for t in runs if t not in own}
                order[:] = [fresh.get(t.name, t) for t in order]
                if oha and scenario.oha is not None:
                    open_raw[scenario.name] = bench.open_loop(scenario, runs,
                                                              raw[scenario.name])
            finally:
                for target in own:
                    group.stop_one(target.proc)
    finally:
        group.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = report.summarize_all(raw)
    open_summary = report.summarize_all(open_raw)
    kinds = {s.name: "idle" if s.tool == "idle" else "load" for s in scenarios}
    now = datetime.datetime.now(datetime.timezone.utc)
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "command": "perf/run " + " ".join(sys.argv[1:] if argv is None else argv),
        "workers": args.workers, "rounds": args.rounds, "duration": bench.duration,
        "pinning": pinning, "docs": {s.name: s.doc for s in scenarios},
        "goals": {s.name: s.goal for s in scenarios if s.goal},
        "versions": {
            "strait": install.version([strait, "--version"]),
            "envoy": install.version([envoy, "--version"]),
            "nginx": install.version(["nginx", "-v"]),
            "haproxy": install.version(["haproxy", "-v"]),
            "wrk": install.version(["wrk", "--version"]),
            "h2load": install.version(["h2load", "--version"]),
            "oha": install.version([oha, "--version"]) if oha else None,
        },
        "elapsed_s": round(time.monotonic() - started),
        # 1-minute load average before the build and after the last run: other work on
        # the machine (builds) shows up here.
        "load": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    table = report.markdown(meta, summary, kinds, open_summary)
    print(table)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, now.strftime("%Y%m%dT%H%M%SZ") + ".json")
    with open(path, "w") as file:
        json.dump({"meta": meta, "summary": summary, "open_loop_summary": open_summary,
                   "rounds": raw, "open_loop_rounds": open_raw, "markdown": table},
                  file, indent=1)
    errors = report.total_errors(summary) + report.total_errors(open_summary)
    log(f"wrote {path} after {meta['elapsed_s']} s; {errors} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

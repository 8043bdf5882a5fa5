"""Medians over rounds, ratios, and the Markdown table.

A run's raw figures are `rounds[scenario][target] = [dict per round]`. `summarize`
turns each list into medians (errors are summed: one error in any round counts).
Ratios put Strait first: "Strait ÷ peer" for each peer, and "target ÷ direct".
"""

import statistics

STRAIT = "strait"
PEERS = ("envoy", "nginx", "haproxy")
# Scenarios with `plain` also run Strait and Envoy on the plain bootstrap: "NAME-plain".
PLAIN = ("strait", "envoy")
TARGETS = (STRAIT, "envoy") + tuple(f"{t}-plain" for t in PLAIN) + (
    "nginx", "haproxy", "direct")
# The order each round runs the shared targets in: HAProxy, the peer Strait's targets
# are closest to, right after Strait, so the two runs of that round's ratio mostly see
# the host in the same state (`per_round_ratios`). Envoy's ratios are 2-4×, far
# outside the host's swings.
RUN_ORDER = (STRAIT, "haproxy", "nginx", "envoy")
LABELS = {"strait": "Strait", "envoy": "Envoy", "nginx": "NGINX", "haproxy": "HAProxy",
          "direct": "direct", "strait-plain": "Strait, plain route",
          "envoy-plain": "Envoy, plain route"}
MIB = 1024 * 1024


def median(values):
    """Median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summarize(per_round):
    """[{metric: value}, …] → {metric: median}, with `errors` summed over rounds."""
    keys = {k for r in per_round for k in r}
    out = {k: median([r.get(k) for r in per_round]) for k in keys if k != "errors"}
    out["errors"] = sum(r.get("errors") or 0 for r in per_round)
    out["rounds"] = len(per_round)
    return out


def summarize_all(rounds):
    out = {scenario: {target: summarize(runs) for target, runs in by_target.items()}
           for scenario, by_target in rounds.items()}
    for scenario, by_target in rounds.items():
        strait_runs = by_target.get(STRAIT)
        for peer in PEERS:
            if strait_runs and by_target.get(peer):
                out[scenario][peer]["strait_over"] = per_round_ratios(
                    strait_runs, by_target[peer])
        for proxy in PLAIN:
            with_runs, plain_runs = by_target.get(proxy), by_target.get(f"{proxy}-plain")
            if with_runs and plain_runs:
                out[scenario][proxy].update(paired(with_runs, plain_runs))
    return out


# The figures the summary divides, Strait's by each peer's.
RATIO_KEYS = ("rps", "p99_ms", "cpu_s_per_10k", "rss_load", "bytes_per_conn")


def per_round_ratios(strait_runs, peer_runs):
    """Strait ÷ a peer, the median of each round's own ratio, per figure.

    The host's slow spells (see `paired`) last seconds: a ratio of medians taken
    apart can set a spell that fell on Strait's run in one round against a peer's run
    outside it. Each round's two runs are a few seconds apart, in the same round's
    host state more often than any two runs of different rounds.
    """
    pairs = list(zip(strait_runs, peer_runs))
    return {key: median([ratio(s.get(key), p.get(key)) for s, p in pairs])
            for key in RATIO_KEYS}


def paired(with_runs, plain_runs):
    """A proxy with a feature against itself without it, round by round.

    The two runs of a round are back to back (`bench.scenario_targets`). The host
    here has slow spells of several seconds (every proxy's req/s drops ~20% and its
    CPU per request rises as much), and a median of three rounds taken separately for
    each side can put a slow spell on one side only; the median of each round's own
    ratio (or difference) cancels a spell that covers both runs of the pair.
    """
    pairs = list(zip(with_runs, plain_runs))
    cost = [None if w.get("cpu_s_per_10k") is None or p.get("cpu_s_per_10k") is None
            else (w["cpu_s_per_10k"] - p["cpu_s_per_10k"]) * 100 for w, p in pairs]
    return {
        "paired_kept": median([ratio(w.get("rps"), p.get("rps")) for w, p in pairs]),
        "paired_cpu": median([ratio(w.get("cpu_s_per_10k"), p.get("cpu_s_per_10k"))
                              for w, p in pairs]),
        "paired_cost_us": median(cost),
    }


def total_errors(summary):
    return sum(row.get("errors", 0) for by_target in summary.values()
               for row in by_target.values())


def _fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _mib(value):
    return None if value is None else value / MIB


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# Summary rows: (label, metric key, scenario kinds it applies to). ↑ = higher is better.
SUMMARY_METRICS = (
    ("req/s ↑", "rps", "load"),
    ("p99 ↓", "p99_ms", "load"),
    ("CPU per request ↓", "cpu_s_per_10k", "load"),
    ("RSS under load ↓", "rss_load", "load"),
    ("RSS per idle connection ↓", "bytes_per_conn", "idle"),
)


def summary_table(summary, kinds, open_loop=None):
    """One row per scenario and metric: Strait's figure divided by each peer's, the
    median of the rounds' own ratios (`per_round_ratios`) where the rounds are kept. With
    an open-loop pass, its p99 (every target at the same offered rate: the latency
    figure that counts) follows the closed-loop one."""
    def row(scenario, label, by_target, key):
        strait = by_target.get(STRAIT, {})

        def over(peer):
            per_round = by_target[peer].get("strait_over", {}).get(key)
            return per_round if per_round is not None else ratio(
                strait.get(key), by_target[peer].get(key))

        return [scenario, label] + [_fmt(over(peer)) if peer in by_target else "n/a"
                                    for peer in PEERS]

    rows = []
    for scenario, by_target in summary.items():
        for label, key, kind in SUMMARY_METRICS:
            if kinds.get(scenario) != kind:
                continue
            rows.append(row(scenario, label, by_target, key))
            if key == "p99_ms" and open_loop and scenario in open_loop:
                rows.append(row(scenario, "p99, open loop ↓", open_loop[scenario], key))
    return _table(["scenario", "Strait ÷"] + [LABELS[p] for p in PEERS], rows)


def load_table(by_target):
    rows = []
    direct_rps = by_target.get("direct", {}).get("rps")
    for target in TARGETS:
        row = by_target.get(target)
        if row is None:
            if target in PEERS:  # the scenario does not apply to it (e.g. proxy-wasm)
                rows.append([LABELS[target]] + ["n/a"] * 8)
            continue
        rows.append([LABELS[target], _fmt(row.get("rps")),
                     _fmt(ratio(row.get("rps"), direct_rps)),
                     _fmt(row.get("p50_ms")), _fmt(row.get("p99_ms")),
                     _fmt(row.get("cpu_s_per_10k"), 3),
                     _fmt(_mib(row.get("rss_idle")), 1), _fmt(_mib(row.get("rss_load")), 1),
                     _fmt(row.get("errors"))])
    return _table(["target", "req/s", "÷ direct", "p50 ms", "p99 ms", "CPU s/10k req",
                   "RSS idle MiB", "RSS load MiB", "errors"], rows)


# Below these, a loss or a feature's CPU per request is within a --quick run's noise.
NOISE_LOSS = 0.01
NOISE_US = 0.1


def plain_figures(by_target):
    """Each proxy's req/s with ÷ without the scenario's feature, and the cross ratios.

    loss = 1 − with ÷ without. "Strait loss ÷ Envoy loss" is None unless Envoy lost
    at least NOISE_LOSS, and "Strait's feature µs ÷ Envoy's" unless Envoy's were at
    least NOISE_US: below that Envoy's figure is this host's noise (it reads 0.3% or
    0.002 µs for a feature that costs it nothing), and a quotient by it meaningless.
    """
    rps = {t: by_target.get(t, {}).get("rps") for t in by_target}
    # Each round's pair where the rounds were kept (`paired`), else the medians'.
    def pick(p, key, fallback):
        value = by_target.get(p, {}).get(key)
        return fallback if value is None else value

    kept = {p: pick(p, "paired_kept", ratio(rps.get(p), rps.get(f"{p}-plain")))
            for p in PLAIN}
    loss = {p: None if kept[p] is None else 1 - kept[p] for p in PLAIN}
    envoy_loss = loss["envoy"]
    # CPU per request does not depend on who saturates first: steadier than req/s on a
    # shared machine.
    cpu = {p: pick(p, "paired_cpu", ratio(by_target.get(p, {}).get("cpu_s_per_10k"),
                                          by_target.get(f"{p}-plain", {}).get(
                                              "cpu_s_per_10k"))) for p in PLAIN}
    # What the feature itself costs per request, in µs of proxy CPU: unlike the loss,
    # it does not shrink for a proxy that is slow without the feature.
    cost = {p: pick(p, "paired_cost_us",
                    _cost_us(by_target.get(p, {}).get("cpu_s_per_10k"),
                             by_target.get(f"{p}-plain", {}).get("cpu_s_per_10k")))
            for p in PLAIN}
    return {
        "kept": kept, "loss": loss, "cpu": cpu, "cost_us": cost,
        "cost_ratio": ratio(cost["strait"], cost["envoy"])
        if cost["envoy"] and cost["envoy"] >= NOISE_US else None,
        "loss_ratio": ratio(loss["strait"], envoy_loss)
        if envoy_loss and envoy_loss >= NOISE_LOSS else None,
        "strait_with_vs_envoy_without": ratio(rps.get("strait"), rps.get("envoy-plain")),
    }


def _cost_us(with_s_per_10k, plain_s_per_10k):
    """CPU µs per request the feature adds (CPU s per 10k requests × 100)."""
    if with_s_per_10k is None or plain_s_per_10k is None:
        return None
    return (with_s_per_10k - plain_s_per_10k) * 100


def _pct(value):
    return "–" if value is None else f"{value * 100:.1f}%"


def plain_table(by_target, goal=None):
    figures = plain_figures(by_target)
    rows = [[LABELS[p], _fmt(by_target.get(p, {}).get("rps")),
             _fmt(by_target.get(f"{p}-plain", {}).get("rps")), _fmt(figures["kept"][p]),
             _pct(figures["loss"][p]), _fmt(figures["cpu"][p]),
             _fmt(figures["cost_us"][p], 2)] for p in PLAIN]
    out = _table(["proxy", "req/s with", "req/s plain", "with ÷ plain", "loss",
                  "CPU/req with ÷ plain", "feature CPU µs/req"], rows)
    out += ["", f"Strait loss ÷ Envoy loss: **{_fmt(figures['loss_ratio'])}**; "
            f"Strait with ÷ Envoy plain: "
            f"**{_fmt(figures['strait_with_vs_envoy_without'])}**"
            + (f" (goal: {goal})" if goal else "")
            + f"; the feature's CPU per request, Strait ÷ Envoy: "
            f"**{_fmt(figures['cost_ratio'])}**"]
    return out


def idle_table(by_target):
    rows = []
    for target in TARGETS:
        row = by_target.get(target)
        if row is None:
            continue
        rows.append([LABELS[target], _fmt(row.get("ok")),
                     _fmt(_mib(row.get("rss_before")), 1),
                     _fmt(_mib(row.get("rss_after")), 1),
                     _fmt(row.get("bytes_per_conn")), _fmt(row.get("errors"))])
    return _table(["target", "connections", "RSS before MiB", "RSS after MiB",
                   "bytes/conn", "errors"], rows)


def open_loop_table(by_target):
    rows = []
    for target in TARGETS:
        row = by_target.get(target)
        if row is None:
            continue
        rows.append([LABELS[target], _fmt(row.get("rate")), _fmt(row.get("rps")),
                     _fmt(row.get("p50_ms")), _fmt(row.get("p99_ms")),
                     _fmt(row.get("errors"))])
    return _table(["target", "offered req/s", "achieved req/s", "p50 ms", "p99 ms",
                   "errors"], rows)


def markdown(meta, summary, kinds, open_loop=None):
    """The whole report. `kinds[scenario]` is "load" or "idle"."""
    out = [f"### {meta['date']} — {meta['machine']}", "",
           f"`{meta['command']}`: {meta['workers']} worker(s) per proxy, "
           f"{meta['rounds']} interleaved rounds, {meta['duration']} s per run, "
           f"median of rounds; {meta['pinning']}"
           + (f"; load average {meta['load'][0]:.2f} before, {meta['load'][1]:.2f} after"
              if meta.get("load") else "") + ".", "",
           "**Strait ÷ peer**, the median of each round's own ratio (below 1 is better "
           "for ↓ rows, above 1 for ↑ rows):", ""]
    out += summary_table(summary, kinds, open_loop)
    for scenario, by_target in summary.items():
        out += ["", f"**{scenario}** — {meta['docs'][scenario]}", ""]
        out += idle_table(by_target) if kinds[scenario] == "idle" else load_table(by_target)
        if any(f"{p}-plain" in by_target for p in PLAIN):
            pairs = any("paired_kept" in by_target.get(p, {}) for p in PLAIN)
            out += ["", f"**{scenario}** vs the plain route, same rounds"
                    + (" (ratios, loss and feature CPU: the median of each round's "
                       "back-to-back pair; req/s: the medians)" if pairs else ""), ""]
            out += plain_table(by_target, meta.get("goals", {}).get(scenario))
        if open_loop and scenario in open_loop:
            out += ["", f"**{scenario}**, open loop (oha -q, latency-corrected)", ""]
            out += open_loop_table(open_loop[scenario])
    return "\n".join(out) + "\n"

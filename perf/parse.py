"""Turn the load generators' output into one dict shape.

Every parser returns {"requests", "rps", "p50_ms", "p99_ms", "errors"}; a figure the
tool does not give is None. `errors` counts non-2xx responses plus socket errors:
a benchmark row is only valid when it is 0.
"""

import json
import re

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _duration_ms(text):
    """'535.00us', '0.95ms', '1.20s' → milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(text):
    """wrk 4.x output run with --latency."""
    total = re.search(r"^\s*(\d+) requests in ", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not total or not rps:
        raise ValueError("no request count in wrk output")
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", text, re.M))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return {
        "requests": int(total.group(1)),
        "rps": float(rps.group(1)),
        "p50_ms": _duration_ms(percentiles["50"]) if "50" in percentiles else None,
        "p99_ms": _duration_ms(percentiles["99"]) if "99" in percentiles else None,
        "errors": errors,
    }


def parse_h2load(text, log_text=None):
    """h2load (nghttp2 1.5x) summary; percentiles come from its --log-file.

    h2load prints no percentiles itself, only min/max/mean, so p50/p99 are computed
    from the per-request log (`start_us<TAB>status<TAB>elapsed_us` per line).
    """
    rps = re.search(r"^finished in [\d.]+\w+, ([\d.]+) req/s", text, re.M)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx",
                      text, re.M)
    if not rps or not counts or not codes:
        raise ValueError("no summary in h2load output")
    _total, _started, done, succeeded, failed, _errored, _timeout = (
        int(n) for n in counts.groups())
    ok = int(codes.group(1))
    # `failed` already holds the errored and timed-out requests and HTTP-level failures
    # (status >= 400); `succeeded - 2xx` adds the 3xx. Requests still in flight when a
    # timed (-D) run ends (started but not done) are not errors.
    errors = failed + (succeeded - ok)
    result = {"requests": done, "rps": float(rps.group(1)), "p50_ms": None,
              "p99_ms": None, "errors": max(errors, 0)}
    if log_text is not None:
        elapsed = sorted(int(line.split("\t")[2]) / 1000.0
                         for line in log_text.splitlines() if line.strip())
        result["p50_ms"] = percentile(elapsed, 50)
        result["p99_ms"] = percentile(elapsed, 99)
    return result


def parse_oha(text):
    """oha's JSON output (`--output-format json`), an open-loop run with -q."""
    data = json.loads(text)
    summary = data["summary"]
    codes = {int(code): n for code, n in data.get("statusCodeDistribution", {}).items()}
    answered = sum(codes.values())
    errors = sum(n for code, n in codes.items() if not 200 <= code < 300)
    # Requests still in flight when -z ends are "aborted due to deadline": not errors.
    errors += sum(n for kind, n in data.get("errorDistribution", {}).items()
                  if kind != "aborted due to deadline")
    latency = data.get("latencyPercentiles", {})

    def ms(key):
        value = latency.get(key)
        return None if value is None else value * 1000.0

    return {"requests": answered, "rps": summary["requestsPerSec"],
            "p50_ms": ms("p50"), "p99_ms": ms("p99"), "errors": errors}


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil without floats
    return sorted_values[int(rank) - 1]

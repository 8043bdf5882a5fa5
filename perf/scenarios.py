"""The scenarios, one entry each. Adding a scenario is adding a row here.

tool     load generator: "wrk" (HTTP/1.1), "h2load" (h2c prior knowledge), or "idle"
         (perf/idle_client.py: open `connections`, one request each, hold them open)
path     backend location: "/" answers 200 "ok\\n", "/64k" answers 64 KiB (GET or POST)
args     extra load-generator arguments
oha      extra oha arguments for the open-loop latency pass (--latency); None = no pass
bootstrap  the configs/ template Strait and Envoy both run (default the plain envoy.yaml);
         another one starts a separate Strait and Envoy for this scenario only
plugin   perf/plugins/NAME, built for wasm32-wasip1; its .wasm fills {{wasm}}
only     the targets that run it (others are shown "n/a"); default all
plain    also run Strait and Envoy on the plain envoy.yaml in the same rounds, and report
         each one's throughput with ÷ without the feature, and the cross ratios
goal     what the plain comparison should show (printed under the table)
expect   (header, value) every response must carry (checked once before the runs)
"""

import os
from dataclasses import dataclass

LUA_POST_4K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "post-4k.lua")


@dataclass(frozen=True)
class Scenario:
    name: str
    tool: str
    path: str
    doc: str
    connections: int = 50
    args: tuple = ()
    oha: tuple = None
    bootstrap: str = "envoy.yaml"
    plugin: str = None
    only: tuple = None
    plain: bool = False
    goal: str = None
    expect: tuple = None


SCENARIOS = {s.name: s for s in [
    Scenario("h1-keepalive", "wrk", "/", "HTTP/1.1 keep-alive, tiny response",
             oha=()),
    Scenario("h1-wasm", "wrk", "/", "h1-keepalive through one proxy-wasm filter "
             "(adds a response header)", bootstrap="envoy-wasm.yaml", plugin="header",
             only=("strait", "envoy", "direct"), plain=True, expect=("x-perf", "wasm"),
             goal="Strait's loss ≤ ½ Envoy's; Strait with the plugin ≥ Envoy without"),
    Scenario("h1-resilience", "wrk", "/", "h1-keepalive with a route retry_policy "
             "(5xx, 2 retries), outlier detection and a 1 s HTTP health check", bootstrap="envoy-resilience.yaml",
             only=("strait", "envoy", "direct"), plain=True,
             goal="loss < 5% for each proxy"),
    Scenario("h1-bodies", "wrk", "/64k", "HTTP/1.1 POST 4 KiB body, 64 KiB response",
             args=("-s", LUA_POST_4K),
             oha=("-m", "POST", "-d", "x" * 4096, "-T", "application/octet-stream")),
    Scenario("h1-close", "wrk", "/", "HTTP/1.1, a new connection per request",
             args=("-H", "Connection: close"), oha=("--disable-keepalive",)),
    Scenario("h2", "h2load", "/", "HTTP/2 h2c, 10 streams per connection",
             args=("-m10",)),
    Scenario("h2-64k", "h2load", "/64k", "HTTP/2 h2c, 64 KiB responses",
             args=("-m10",)),
    # Last: it leaves each proxy with a large upstream pool.
    Scenario("idle-5k", "idle", "/", "5,000 idle keep-alive connections (RSS/conn)",
             connections=5000),
]}

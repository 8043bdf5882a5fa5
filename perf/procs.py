"""Processes the harness starts, and what /proc says about them.

Every process runs in its own process group (`start_new_session`), so stopping it
also stops what it forked (nginx workers). `Group` stops everything it started, in
reverse order, from a `finally`. CPU time and RSS are summed over a process and all
its descendants: /proc/PID/stat already totals the threads of one process, the tree
walk adds nginx's workers to its master.
"""

import http.client
import os
import signal
import socket
import subprocess
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    """A loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpus, argv):
    """`argv` run under `taskset -c CPUS`, or unchanged when `cpus` is empty."""
    if not cpus:
        return list(argv)
    return ["taskset", "-c", ",".join(str(c) for c in cpus)] + list(argv)


def split_cpus(cpus, workers):
    """(proxy CPUs, load-generator + backend CPUs), or ([], []) when there is no room.

    The proxy gets the first `workers` CPUs and everything else goes to the load
    generator and the backend, so they never compete with the proxy. With no CPU left
    over nothing is pinned (the numbers then include that contention).
    """
    cpus = sorted(cpus)
    if len(cpus) <= workers:
        return [], []
    return cpus[:workers], cpus[workers:]


class Group:
    """The processes of one benchmark run; `stop_all` ends every one of them."""

    def __init__(self):
        self.procs = []

    def start(self, argv, log_path, **kwargs):
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, **kwargs)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def stop_one(self, proc):
        stop(proc)
        self.procs.remove(proc)

    def stop_all(self):
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()


def stop(proc, grace=5.0):
    """SIGTERM the process group, SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # orphaned children, if any
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def _kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_ready(port, path="/", timeout=30.0, proc=None):
    """Poll GET http://127.0.0.1:PORT/PATH until it answers 200 (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
            last = f"status {status}"
        except OSError as err:
            last = err
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready after {timeout}s: {last}")


def read_file_when_written(path, timeout=30.0, proc=None):
    """Content of `path` once something non-empty is written there (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        try:
            with open(path) as file:
                text = file.read().strip()
            if text:
                return text
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} not written after {timeout}s")


def tree_pids(root):
    """`root` and all its descendants, found through the ppid field of /proc/*/stat."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...], or None."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(root):
    """utime + stime of `root` and its descendants (all threads), in seconds."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields:
            # Fields 14 and 15 of stat(5) (utime, stime) are 11 and 12 after the name.
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def rss_bytes(root):
    """VmRSS of `root` plus its descendants, in bytes."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as file:
                for line in file:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total

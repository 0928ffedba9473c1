"""Worker hosts on one machine: Beam EXTERNAL worker pools in network namespaces the test makes.

Each worker "host" is

* a network namespace (``ip netns add``) joined to the launcher's by a veth pair on a private /30
  that the test picks from 10.200.0.0/13 (unused on this machine, checked): the launcher's side is
  ``.4k+1``, the host's ``.4k+2``, and the host's default route goes through the launcher's side,
  so the launcher's first address (``launcher_ip``) is reachable from every host;
* its own hostname (a UTS namespace) and its own ``/etc/hosts`` (bind-mounted in the mount
  namespace ``ip netns exec`` makes), which names the launcher: Beam's embedded job server tells
  its workers to call back at ``socket.getfqdn()`` of the launcher, which is what DNS does on a
  cluster;
* its own ``/tmp`` (a tmpfs) and ``$HOME`` in it: nothing the launcher wrote to its temporary
  folder or its caches is there.  The one folder all machines share is ``shared`` (bind-mounted
  back at the same path), as a cluster shares a bucket or an NFS mount;
* Beam's worker pool (``python -m apache_beam.runners.worker.worker_pool_main``: what the
  Dockerfile's ``--worker_pool`` entrypoint runs, without the container's boot program) from the
  project's virtual environment, which stands in for the worker image.

A small gRPC worker-pool service on the launcher's address hands each StartWorker to the hosts in
turn, as a load balancer in front of the pools would (Beam's EXTERNAL environment names one
endpoint).  ``Cluster.launch(command)`` runs a command as the launcher: under its own hostname,
with an ``/etc/hosts`` that names it, in the launcher's network namespace.

Needs root with ``ip netns``, veth links and mounts; ``Cluster.check()`` says why not, for a skip.
Everything made (namespaces, links, processes) goes at ``close()``, also when a step fails.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

POOL_PORT = 50000
VENV_BIN = Path(sys.executable).parent
# The test's addresses: a /24 inside 10.200.0.0/13 (10.200.0.0 - 10.207.255.255) not in use here.
SUPERNET = ipaddress.ip_network("10.200.0.0/13")


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


def check() -> Optional[str]:
    """None where namespaces, veth links and mounts can be made here, else why not (a skip reason)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"fcprobe{os.getpid()}"
    try:
        made = _run("ip", "netns", "add", name, check=False)
        if made.returncode != 0:
            return f"ip netns add is not permitted: {made.stderr.strip()}"
        try:
            link = _run(
                "ip", "link", "add", f"{name[:12]}a", "type", "veth", "peer", "name", f"{name[:12]}b", check=False
            )
            if link.returncode != 0:
                return f"veth links cannot be made: {link.stderr.strip()}"
            _run("ip", "link", "del", f"{name[:12]}a", check=False)
            mount = _run(
                "ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c",
                "hostname fcprobe && mount -t tmpfs tmpfs /media && umount /media", check=False,
            )  # fmt: skip
            if mount.returncode != 0:
                return f"mounting or setting a hostname is not permitted: {mount.stderr.strip()}"
        finally:
            _run("ip", "netns", "del", name, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot make network namespaces: {e}"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUPERNET that no address or route of this machine touches."""
    used = _run("ip", "-o", "addr").stdout + _run("ip", "route", "show", "table", "all", check=False).stdout
    start = os.getpid() % 2048
    for i in range(2048):
        net = list(SUPERNET.subnets(new_prefix=24))[(start + i) % 2048]
        prefix = ".".join(str(net.network_address).split(".")[:3]) + "."
        if prefix not in used:
            return net
    raise RuntimeError("no free /24 in 10.200.0.0/13")


class _Dispatcher:
    """A worker-pool service that hands each StartWorker to the next pool in turn."""

    def __init__(self, host: str, pools: Sequence[str]):
        import grpc
        from apache_beam.portability.api import beam_fn_api_pb2_grpc

        self.pools = list(pools)
        self.started: List[str] = []  # the pool each worker went to, in order
        self._next = itertools.cycle(self.pools)
        self._lock = threading.Lock()
        self._channels = {p: grpc.insecure_channel(p) for p in self.pools}
        self._stubs = {p: beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(c) for p, c in self._channels.items()}
        self._where: dict = {}
        dispatcher = self

        class Servicer(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
            def StartWorker(self, request, context):  # noqa: N802 - the gRPC method's name
                with dispatcher._lock:
                    pool = next(dispatcher._next)
                    dispatcher.started.append(pool)
                    dispatcher._where[request.worker_id] = pool
                return dispatcher._stubs[pool].StartWorker(request, timeout=60)

            def StopWorker(self, request, context):  # noqa: N802
                pool = dispatcher._where.get(request.worker_id, dispatcher.pools[0])
                return dispatcher._stubs[pool].StopWorker(request, timeout=60)

        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port(f"{host}:0")
        self.address = f"{host}:{self.port}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)
        for channel in self._channels.values():
            channel.close()


class Cluster:
    """``hosts`` worker hosts around this machine, sharing ``shared``; ``work`` holds their logs
    and /etc/hosts files (not shared with them: it is the launcher's)."""

    def __init__(self, shared: Path, work: Path, hosts: int = 2):
        self.shared, self.work, self.n = Path(shared).resolve(), Path(work).resolve(), hosts
        self.tag = f"fc{os.getpid() % 100000}"
        self.namespaces: List[str] = []
        self.links: List[str] = []
        self.pools: List[subprocess.Popen] = []
        self.dispatcher: Optional[_Dispatcher] = None
        self.launcher_name = f"{self.tag}-launcher"

    # -- set-up -------------------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        net = _free_subnet()
        base = int(net.network_address)
        self.host_ips = []
        for k in range(self.n):
            ns, outside, inside = f"{self.tag}-w{k}", f"{self.tag}w{k}o", f"{self.tag}w{k}i"
            mine, theirs = str(ipaddress.ip_address(base + 4 * k + 1)), str(ipaddress.ip_address(base + 4 * k + 2))
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            self.links.append(outside)
            _run("ip", "link", "set", inside, "netns", ns)
            _run("ip", "addr", "add", f"{mine}/30", "dev", outside)
            _run("ip", "link", "set", outside, "up")
            for cmd in (
                ("ip", "addr", "add", f"{theirs}/30", "dev", inside),
                ("ip", "link", "set", inside, "up"),
                ("ip", "link", "set", "lo", "up"),
                ("ip", "route", "add", "default", "via", mine),
            ):
                _run("ip", "netns", "exec", ns, *cmd)
            self.host_ips.append(theirs)
        self.launcher_ip = str(ipaddress.ip_address(base + 1))
        names = ["127.0.0.1 localhost", f"{self.launcher_ip} {self.launcher_name}"]
        names += [f"{ip} {self.tag}-w{k}" for k, ip in enumerate(self.host_ips)]
        self.hosts_file = self.work / "hosts"
        self.hosts_file.write_text("\n".join(names) + "\n")
        for k, ns in enumerate(self.namespaces):
            self.pools.append(self._start_pool(k, ns))
        for k, ip in enumerate(self.host_ips):
            self._wait_for(ip, POOL_PORT, self.pools[k], self.work / f"pool-{k}.log")
        self.dispatcher = _Dispatcher(self.launcher_ip, [f"{ip}:{POOL_PORT}" for ip in self.host_ips])

    def _start_pool(self, k: int, ns: str) -> subprocess.Popen:
        """Beam's worker pool in host ``k``: own hostname, /etc/hosts and /tmp, ``shared`` kept."""
        shared = shlex.quote(str(self.shared))
        # the checkout with its virtual environment (the installed package points into it): a
        # clone under /tmp (as CI may make) must stay visible when /tmp is replaced
        checkout = shlex.quote(str(VENV_BIN.parent.parent))
        script = " && ".join(
            [
                f"hostname {self.tag}-w{k}",
                f"mount --bind {shlex.quote(str(self.hosts_file))} /etc/hosts",
                f"mount --bind {shared} /media",  # hold the shared folder while /tmp is replaced
                f"mount --bind {checkout} /mnt",  # and the checkout
                "mount -t tmpfs tmpfs /tmp",
                f"mkdir -p {shared} {checkout} /tmp/home",
                f"mount --bind /media {shared}",
                f"mount --bind /mnt {checkout}",
                "umount /media",
                "umount /mnt",
                f"exec python -m apache_beam.runners.worker.worker_pool_main --service_port={POOL_PORT}",
            ]
        )
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",  # `python`: the pool starts workers with it
            "HOME": "/tmp/home",
            "LANG": "C.UTF-8",
            "NO_ALBUMENTATIONS_UPDATE": "1",
        }
        log = open(self.work / f"pool-{k}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @staticmethod
    def _wait_for(ip: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker pool at {ip} exited: {log.read_text()[-2000:]}")
            try:
                socket.create_connection((ip, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the worker pool at {ip}:{port} did not start in {timeout:.0f} s")

    # -- use ----------------------------------------------------------------------------------
    def launch(self, command: Sequence[str], timeout: float = 900, env: Optional[dict] = None):
        """Run ``command`` as the launcher (hostname and /etc/hosts its own; this network)."""
        script = 'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"'
        return subprocess.run(
            ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script, self.launcher_name,
             str(self.hosts_file), *command],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip

    def pool_logs(self) -> str:
        return "\n".join(
            f"--- pool {k}\n" + (self.work / f"pool-{k}.log").read_text(errors="replace")[-4000:]
            for k in range(len(self.pools))
            if (self.work / f"pool-{k}.log").exists()
        )

    # -- tear-down ----------------------------------------------------------------------------
    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None
        for proc in self.pools:  # SIGINT: the pool stops its server and ends its workers (atexit)
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for proc in self.pools:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:  # the session this test started (the pool and its SDK workers)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.pools = []
        for link in self.links:
            _run("ip", "link", "del", link, check=False)
        for ns in self.namespaces:
            _run("ip", "netns", "del", ns, check=False)
        self.links, self.namespaces = [], []


__all__ = ["Cluster", "check", "POOL_PORT"]

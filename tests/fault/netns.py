"""Hosts of their own for the network-fault tests: Linux network namespaces on a bridge, links cut with nftables.

Each host is a network namespace joined to a bridge in the test's (root) namespace by a veth pair, on a private
/24 the harness picks; the test process itself is the bridge's address. A link is cut by nftables rules in a
host's namespace that DROP packets (no reset is ever sent, so TCP sees a half-open connection, as behind a cut
cable or a dead host), in one direction or both; healing removes them. `Network.close` kills whatever still runs
in the namespaces and removes them, the veths and the bridge, also when the test failed.

Needs root, iproute2 and nftables (`make test` installs them as root on Debian); the tests skip otherwise. This
kernel has no `sch_netem`, so delay and loss are not made with `tc netem`: loss is an nftables `numgen` rule.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


def _run(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """Why this machine cannot run the harness (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"needs `{tool}` (Debian: apt-get install iproute2 nftables)"
    probe = f"dgprobe{os.getpid() % 100000}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "exec", probe, "nft", "list", "ruleset")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces or nftables unusable here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass(frozen=True)
class Host:
    """A network namespace with one address on the test's bridge."""

    name: str
    address: str

    def command(self, args: Sequence[str]) -> list[str]:
        """`args` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *args]


@dataclass
class Network:
    """A bridge and the hosts on it; the faults applied to each host's links."""

    tag: str = field(default_factory=lambda: f"dg{os.getpid() % 10000}")
    subnet: str = field(default_factory=lambda: f"10.231.{os.getpid() % 250}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _rules: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> {fault name: nft rule}

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        """The test process's own address on the bridge (the load generator, the checks)."""
        return f"{self.subnet}.1"

    def open(self) -> None:
        """Create the bridge, with the test process's address on it."""
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def add_host(self, role: str) -> Host:
        """A new namespace on the bridge, e.g. add_host("mysql")."""
        index = len(self.hosts) + 2
        host = Host(f"{self.tag}{role}", f"{self.subnet}.{index}")
        outside, inside = f"{self.tag}v{index}", f"{self.tag}p{index}"
        _run("ip", "netns", "add", host.name)
        self.hosts[role] = host
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", inside, "netns", host.name)
        _run("ip", "link", "set", outside, "master", self.bridge)
        _run("ip", "link", "set", outside, "up")
        for args in (["ip", "addr", "add", f"{host.address}/24", "dev", inside], ["ip", "link", "set", inside, "up"],
                     ["ip", "link", "set", "lo", "up"]):
            _run(*host.command(args))
        return host

    def cut(self, host: Host, peer: Host, both_ways: bool = True) -> None:
        """Drop every packet from `host` to `peer` (and back, unless one way): no reset, a half-open link."""
        rules = {f"to {peer.address}": f"add rule inet fault out ip daddr {peer.address} drop"}
        if both_ways:
            rules[f"from {peer.address}"] = f"add rule inet fault in ip saddr {peer.address} drop"
        self._apply(host, rules)

    def lose(self, host: Host, percent: int) -> None:
        """Drop this share of the packets `host` sends or receives, at random."""
        self._apply(host, {"loss out": f"add rule inet fault out numgen random mod 100 < {percent} drop",
                           "loss in": f"add rule inet fault in numgen random mod 100 < {percent} drop"})

    def heal(self, host: Host) -> None:
        """Remove every fault of `host`'s links."""
        self._rules.pop(host.name, None)
        self._write(host)

    def _apply(self, host: Host, rules: dict[str, str]) -> None:
        self._rules.setdefault(host.name, {}).update(rules)
        self._write(host)

    def _write(self, host: Host) -> None:
        # The whole table at once (nft -f is atomic): no moment with half the rules.
        script = "\n".join([
            "table inet fault {}", "delete table inet fault", "table inet fault {",
            "  chain in { type filter hook input priority 0; policy accept; }",
            "  chain out { type filter hook output priority 0; policy accept; }", "}",
            *self._rules.get(host.name, {}).values(), ""])
        _run(*host.command(["nft", "-f", "-"]), stdin=script)

    def close(self) -> None:
        """Kill what runs in the hosts, remove them, their links and the bridge (every step tried)."""
        for host in self.hosts.values():
            pids = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True, timeout=30)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, timeout=30)
        for index in range(2, len(self.hosts) + 2):  # gone with their namespace, unless something still holds it
            subprocess.run(["ip", "link", "del", f"{self.tag}v{index}"], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
        self.hosts.clear()
        self._rules.clear()

"""
Mode dnat: iptables rules that send the pods' requests for the link-local addresses to
imds's own address on the node, as kube2iam does for 169.254.169.254 [K-14]; for CNIs
whose pods do not reach a node-local address by their default route.

    nat PREROUTING  -m comment --comment "imds node-setup" -j IMDS-NODE   (first rule)
    nat IMDS-NODE   -d 169.254.169.254/32 -i veth+ -p tcp --dport 80 -j DNAT --to ADDR:PORT
                    ... one per address and interface glob; ip6tables the same for IPv6

With the `iptables`/`ip6tables` tools (Debian's iptables, the nft backend on current
distributions), not a netlink library: the rule format is iptables' own, which whatever
else writes the node's rules (kube-proxy, the CNI, Docker) uses too, and pyroute2's
nftables support is not complete enough to write NAT rules. Each table is changed by one
`iptables-restore --noflush` transaction, so a rule file the kernel refuses changes
nothing; a chain of our own name makes cleanup exact: the jump to it, its rules, and it.
The caller's address survives DNAT, so the role map still sees the pod [C-05].
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from imds.errors import NodeError
from imds.node.options import IPV4_ADDRESSES, IPV6_ADDRESSES, SERVICE_PORT, NodeOptions

CHAIN = "IMDS-NODE"
COMMENT = "imds node-setup"
JUMP = f'-m comment --comment "{COMMENT}" -j {CHAIN}'


@dataclass(frozen=True)
class Family:
    version: int
    tool: str
    addresses: tuple[str, ...]

    @property
    def save(self) -> str:
        return f"{self.tool}-save"

    @property
    def restore(self) -> str:
        return f"{self.tool}-restore"


FAMILIES = (Family(4, "iptables", IPV4_ADDRESSES), Family(6, "ip6tables", IPV6_ADDRESSES))


@dataclass(frozen=True)
class State:
    """What the nat table holds of ours: the chain's rules (None: no chain), the jumps."""

    rules: tuple[str, ...] | None
    jumps: tuple[str, ...]


def _missing(family: Family, path: str | None) -> list[str]:
    return [tool for tool in (family.save, family.restore)
            if shutil.which(tool, path=path) is None]


def _run(argv: list[str], path: str | None, stdin: str = "") -> str:
    tool = shutil.which(argv[0], path=path)
    if tool is None:  # checked by _missing before anything runs; gone since
        raise NodeError(f"{argv[0]} not found on PATH")
    result = subprocess.run([tool, *argv[1:]], input=stdin, capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0:
        raise NodeError(f"{argv[0]}: {result.stderr.strip() or 'exit ' + str(result.returncode)}")
    return result.stdout


def read_state(family: Family, path: str | None) -> State:
    text = _run([family.save, "-t", "nat"], path)
    lines = text.splitlines()
    has_chain = any(line.startswith(f":{CHAIN} ") for line in lines)
    rules = tuple(line for line in lines if line.startswith(f"-A {CHAIN} "))
    jumps = tuple(line for line in lines
                  if line.startswith("-A PREROUTING ") and line.endswith(f"-j {CHAIN}"))
    return State(rules if has_chain else None, jumps)


def _wanted(family: Family, options: NodeOptions) -> list[str]:
    target = next(t for t in options.targets if t.version == family.version)
    prefix = 128 if family.version == 6 else 32
    return [f"-A {CHAIN} -d {address}/{prefix} -i {glob} -p tcp -m tcp --dport {SERVICE_PORT} "
            f"-j DNAT --to-destination {target}"
            for address in family.addresses for glob in options.interfaces]


def _apply(family: Family, path: str | None, rules: list[str], jump: bool,
           jumps: tuple[str, ...]) -> None:
    """One transaction: the chain declared (which empties it) and filled, the jump ensured."""
    lines = ["*nat", f":{CHAIN} - [0:0]", *rules]
    if jump and not jumps:
        # First in PREROUTING, ahead of a CNI's or kube-proxy's rules.
        lines.append(f"-I PREROUTING 1 {JUMP}")
    lines.append("COMMIT")
    _run([family.restore, "--noflush"], path, "\n".join(lines) + "\n")


def _remove(family: Family, path: str | None, state: State) -> None:
    lines = ["*nat", *("-D " + jump.removeprefix("-A ") for jump in state.jumps)]
    if state.rules is not None:
        lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
    lines.append("COMMIT")
    _run([family.restore, "--noflush"], path, "\n".join(lines) + "\n")


def _families(options: NodeOptions) -> list[Family]:
    return [family for family in FAMILIES if family.version == 4 or options.ipv6]


def setup(options: NodeOptions, environ: Mapping[str, str]) -> list[str]:
    """Install or refresh our chain in each family; a failure undoes this run's changes."""
    path = environ.get("PATH")
    families = _families(options)
    for family in families:
        missing = _missing(family, path)
        if missing:
            raise NodeError(f"{', '.join(missing)} not found on PATH: mode dnat needs "
                            "iptables (Debian: apt-get install iptables); nothing was changed")
    before = {family.version: read_state(family, path) for family in families}
    done: list[str] = []
    applied: list[Family] = []
    try:
        for family in families:
            state = before[family.version]
            rules = _wanted(family, options)
            if state.rules == tuple(rules) and state.jumps:
                continue
            _apply(family, path, rules, jump=True, jumps=state.jumps)
            applied.append(family)
            done.append(f"{family.tool}: chain {CHAIN} with {len(rules)} DNAT rules, "
                        "jumped to from nat PREROUTING")
    except NodeError as exc:
        for family in reversed(applied):
            _restore(family, path, before[family.version])
        raise NodeError(f"{exc}; nothing was left changed") from None
    return done


def _restore(family: Family, path: str | None, state: State) -> None:
    """Put a family back as it was before this run."""
    now = read_state(family, path)
    if state.rules is None:
        _remove(family, path, now)
        return
    added = ["-D " + jump.removeprefix("-A ") for jump in now.jumps if jump not in state.jumps]
    lines = ["*nat", f":{CHAIN} - [0:0]", *state.rules, *added, "COMMIT"]
    _run([family.restore, "--noflush"], path, "\n".join(lines) + "\n")


def cleanup(options: NodeOptions, environ: Mapping[str, str]) -> list[str]:
    """Remove the jump, the rules and the chain from each family whose tools exist."""
    path = environ.get("PATH")
    done: list[str] = []
    present = [family for family in _families(options) if not _missing(family, path)]
    if not present:
        raise NodeError("iptables-save and iptables-restore not found on PATH: cannot check "
                        "for imds's rules (Debian: apt-get install iptables)")
    for family in present:
        state = read_state(family, path)
        if state.rules is None and not state.jumps:
            continue
        _remove(family, path, state)
        done.append(f"{family.tool}: removed chain {CHAIN} and the jump to it")
    return done

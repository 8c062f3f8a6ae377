"""
imds against nginx, on loopback, in one run: throughput and latency of what SDKs send,
memory under a million tokens, STS calls under a thousand cold clients, and the time from
start to the first credential.

    .venv/bin/python benchmarks/run.py [--quick] [--json benchmarks/results.json]
    .venv/bin/python benchmarks/run.py --only ecs_keepalive --only pod_close  # those rows

nginx (one worker, accepting deferred as imds does) serves the same credential bytes as
static files and is the baseline for what this machine can do; wrk loads both at 50
connections. Each server gets the same single CPU, wrk the others. Rounds alternate nginx
and imds and the medians are reported, because a shared machine drifts. Needs the Debian
packages wrk and nginx (installed with apt-get when run as root; --no-install to refuse).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import clients
import procs
from clients import CREDENTIALS, WrkResult
from sts_counter import CountingProxy

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str
    keepalive: bool
    # How imds and nginx are made comparable in this scenario.
    fairness: str
    # Requests per unit reported (the SDK sequence is three requests).
    requests_per_unit: int = 1
    # Held to TARGET_RATIO of nginx's requests per second.
    ratio_target: bool = False


SCENARIOS = (
    Scenario("get_keepalive", "credential GET, keep-alive", "get", True,
             "both keep connections open (imds --connection-close false)",
             ratio_target=True),
    Scenario("get_unique", "credential GET, keep-alive, nothing kept", "unique", True,
             "as above, and every request differs (a header), so imds works out each "
             "answer instead of sending a kept one", ratio_target=True),
    Scenario("get_close", "credential GET, new connection each", "get", False,
             "both close after each response (imds default, like EC2; nginx "
             "keepalive_timeout 0)", ratio_target=True),
    Scenario("put_close", "token PUT, new connection each", "put", False,
             "as above; nginx returns fixed token bytes, imds signs a new token"),
    Scenario("sdk_close", "SDK sequence: PUT, role list, credentials", "sdk", False,
             "as above; three requests per sequence, each on a new connection",
             requests_per_unit=3),
    # The container credential GETs (issue 14), nginx serving the same document bytes.
    Scenario("ecs_keepalive", "ECS credentials GET, keep-alive", "ecs", True,
             "full-URI flow: GET /v2/credentials/<id> with Authorization: <token> [K-02]; "
             "both keep connections open", ratio_target=True),
    Scenario("ecs_close", "ECS credentials GET, new connection each", "ecs", False,
             "as above, both close after each response", ratio_target=True),
    Scenario("pod_keepalive", "Pod Identity GET, keep-alive", "pod", True,
             "GET /v1/credentials with a service account JWT [K-06]; both keep "
             "connections open", ratio_target=True),
    Scenario("pod_close", "Pod Identity GET, new connection each", "pod", False,
             "as above, both close after each response", ratio_target=True),
)

GET_CLOSE = next(s for s in SCENARIOS if s.key == "get_close")

TARGET_RATIO = 0.8
TARGET_P99_MS = 5.0

# The full-URI flow's token imds is started with (--container-token); not a secret.
CONTAINER_TOKEN = "imds-bench-container-token-0123456789"


# ---------------------------------------------------------------------- helpers


def ensure_tools(install: bool) -> None:
    missing = [tool for tool, package in (("wrk", "wrk"), ("nginx", "nginx-light"))
               if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    packages = ["nginx-light" if tool == "nginx" else tool for tool in missing]
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(packages)} with apt-get …", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *packages], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return
    sys.exit(f"benchmarks/run.py needs {' and '.join(missing)}: "
             f"apt-get install {' '.join(packages)}")


def median_of(results: list[WrkResult], unit: int) -> dict[str, float]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    cpu = [r.cpu_us_per_request for r in results if r.cpu_us_per_request is not None]
    return {
        "per_second": med([r.rps for r in results]) / unit,
        "requests_per_second": med([r.rps for r in results]),
        "p50_ms": med([r.p50_ms for r in results]),
        "p99_ms": med([r.p99_ms for r in results]),
        "max_ms": max(r.max_ms for r in results),
        "cpu_us_per_request": med(cpu) if cpu else float("nan"),
        "non_2xx": sum(r.non_2xx for r in results),
        "socket_errors": sum(r.socket_errors for r in results),
    }


def measured(pid: int, url: str, scenario: Scenario, *, connections: int, duration: float,
             env: dict[str, str]) -> WrkResult:
    before = procs.cpu_seconds(pid)
    result = clients.wrk(url, scenario.script, connections=connections, duration=duration,
                         env=env)
    used = procs.cpu_seconds(pid) - before
    cpu = used * 1e6 / result.requests if result.requests else None
    return WrkResult(**{**asdict(result), "cpu_us_per_request": cpu})


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------- parts


def throughput(work: Path, options: argparse.Namespace,
               scenarios: tuple[Scenario, ...]) -> dict[str, Any]:
    """The wrk scenarios, nginx and imds alternating, plus the bare Python floors."""
    env = procs.bench_env(work)
    container = ("--container-token", CONTAINER_TOKEN)
    with procs.run_imds(work, *container, env=env, name="imds-close") as imds_close, \
            procs.run_imds(work, "--connection-close", "false", *container, env=env,
                           name="imds-keepalive") as imds_keep:
        token_close, role, document = clients.sdk_sequence(imds_close.url)
        token_keep, _, _ = clients.sdk_sequence(imds_keep.url)
        # Both servers share the state directory: one default task id, one issuer key.
        pods = clients.PodIdentity.of(work / "state")
        ecs_path = "/v2/credentials/" + clients.ecs_task_id(work / "state")
        static = {
            ecs_path: clients.container_document(imds_close.url, ecs_path, CONTAINER_TOKEN),
            pods.path: clients.container_document(imds_close.url, pods.path, pods.token),
        }
        with procs.run_nginx(work, token=token_close, role=role, role_list=role.encode(),
                             document=document, static=static) as nginx, \
                procs.run_floor(work, document) as floor, \
                procs.run_floor(work, document, close=True) as floor_close:
            targets = {
                "nginx": (nginx.pid, {True: nginx.keepalive_url, False: nginx.close_url},
                          token_close),
                "imds": (imds_close.pid, {False: imds_close.url}, token_close),
                "imds-keepalive": (imds_keep.pid, {True: imds_keep.url}, token_keep),
            }

            def run(server: str, scenario: Scenario, seconds: float) -> WrkResult:
                if server == "imds" and scenario.keepalive:
                    server = "imds-keepalive"
                pid, urls, token = targets[server]
                path = {"get": CREDENTIALS + role, "unique": CREDENTIALS + role,
                        "put": "/latest/api/token", "sdk": "/", "ecs": ecs_path,
                        "pod": pods.path}[scenario.script]
                wrk_env = {**os.environ, "IMDS_TOKEN": token, "IMDS_ROLE": role,
                           "IMDS_CONTAINER_TOKEN": CONTAINER_TOKEN,
                           "IMDS_POD_TOKEN": pods.token}
                return measured(pid, urls[scenario.keepalive] + path, scenario,
                                connections=options.connections, duration=seconds,
                                env=wrk_env)

            results: dict[str, dict[str, list[WrkResult]]] = {}
            for scenario in scenarios:
                print(f"  {scenario.title} …", flush=True)
                for server in ("nginx", "imds"):
                    run(server, scenario, options.warmup)
                rounds: dict[str, list[WrkResult]] = {"nginx": [], "imds": []}
                for index in range(options.rounds):
                    order = ("nginx", "imds") if index % 2 == 0 else ("imds", "nginx")
                    for server in order:
                        rounds[server].append(run(server, scenario, options.duration))
                results[scenario.key] = rounds

            floor_env = {**os.environ, "IMDS_TOKEN": token_close, "IMDS_ROLE": role}
            floors = {}
            for key, server, scenario in (("floor", floor, SCENARIOS[0]),
                                          ("floor_close", floor_close, GET_CLOSE)):
                for seconds in (options.warmup, options.duration):
                    floors[key] = measured(server.pid, server.url + CREDENTIALS + role,
                                           scenario, connections=options.connections,
                                           duration=seconds, env=floor_env)

    out: dict[str, Any] = {}
    for scenario in scenarios:
        rounds = results[scenario.key]
        nginx_m = median_of(rounds["nginx"], scenario.requests_per_unit)
        imds_m = median_of(rounds["imds"], scenario.requests_per_unit)
        out[scenario.key] = {
            "title": scenario.title,
            "fairness": scenario.fairness,
            "requests_per_unit": scenario.requests_per_unit,
            "nginx": {"median": nginx_m, "rounds": [asdict(r) for r in rounds["nginx"]]},
            "imds": {"median": imds_m, "rounds": [asdict(r) for r in rounds["imds"]]},
            "ratio": imds_m["requests_per_second"] / nginx_m["requests_per_second"],
            "cpu_ratio": nginx_m["cpu_us_per_request"] / imds_m["cpu_us_per_request"],
        }
    for key, what in (("floor", "bare uvloop protocol, same bytes, keep-alive"),
                      ("floor_close", "bare deferred accept loop, same bytes, new connection "
                                      "each")):
        result = floors[key]
        out[key] = {"title": what,
                    "result": asdict(result), "requests_per_second": result.rps}
    return out


def memory(work: Path, options: argparse.Namespace) -> dict[str, Any]:
    """
    RSS after 1,000 and after `--puts` token PUTs. Each PUT gets its own connection: the
    token response leaves with the hop limit set on its socket [N-05], so imds closes the
    connection after it whatever --connection-close says (imds.http.hoplimit).
    """
    with procs.run_imds(work, name="imds-memory") as imds:
        first = 1000
        tally = asyncio.run(clients.concurrent_puts(imds.url, first, connections=50))
        after_first = procs.rss_kib(imds.pid)
        done, began = first, time.perf_counter()
        non_2xx = tally.other
        rate = 2000.0
        while done < options.puts:
            # wrk runs for a time, not a count: chunks sized from the rate so far.
            seconds = max(1.0, min(30.0, (options.puts - done) / rate))
            result = clients.wrk(imds.url + "/latest/api/token", "put",
                                 connections=options.connections, duration=seconds,
                                 env=dict(os.environ))
            done += result.requests
            non_2xx += result.non_2xx
            rate = max(100.0, result.rps)
        seconds = time.perf_counter() - began
        after_all = procs.rss_kib(imds.pid)
    return {
        "puts": done,
        "rss_after_1000_mib": after_first["VmRSS"] / 1024,
        "rss_after_all_mib": after_all["VmRSS"] / 1024,
        "peak_rss_mib": after_all["VmHWM"] / 1024,
        "growth_mib": (after_all["VmRSS"] - after_first["VmRSS"]) / 1024,
        "non_200": non_2xx,
        "puts_per_second": (done - first) / seconds,
        "seconds": seconds,
    }


def sts_calls(work: Path, options: argparse.Namespace) -> dict[str, Any]:
    """
    AssumeRole calls reaching STS (moto behind a counting proxy) from the moment imds is
    started until `--cold-clients` clients, launched together with it, all hold
    credentials: the clients retry until the server listens, like SDKs in containers that
    start beside it.
    """
    role_arn = "arn:aws:iam::111122223333:role/bench"
    env = procs.bench_env(work, AWS_DEFAULT_REGION="us-east-1", **procs.FAKE_BASE_KEYS)
    with procs.run_moto(work) as moto, CountingProxy(moto) as proxy:
        port = procs.free_port()
        command = procs.imds_command(port, work / "state-sts", "--role-arn", role_arn,
                                     "--sts-endpoint-url", proxy.url)
        log = (work / "imds-sts.log").open("wb")
        process = subprocess.Popen(command, cwd=procs.ROOT, env=env, stdout=log, stderr=log)
        try:
            result = asyncio.run(clients.cold_clients(f"http://127.0.0.1:{port}",
                                                      options.cold_clients, wait=30.0))
            calls = proxy.count("AssumeRole")
            all_calls = len(proxy.actions)
        finally:
            process.terminate()
            process.wait(10)
            log.close()
    return {"clients": result.clients, "succeeded": result.succeeded,
            "assume_role_calls": calls, "sts_calls": all_calls,
            "wall_seconds": result.wall_seconds, "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms}


def startup(work: Path, options: argparse.Namespace) -> dict[str, Any]:
    """Process start to first 200 on the credential path, embedded default."""
    env = procs.bench_env(work)

    def once(state: Path) -> float:
        port = procs.free_port()
        return clients.first_credential(procs.imds_command(port, state), cwd=procs.ROOT,
                                        env=env, port=port)

    fresh = [once(work / f"state-fresh-{i}") for i in range(options.starts)]
    reused = [once(work / "state-fresh-0") for _ in range(options.starts)]
    return {"first_start_seconds": fresh, "later_start_seconds": reused,
            "first_start_median": statistics.median(fresh),
            "later_start_median": statistics.median(reused),
            "worst": max(fresh + reused)}


# ---------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"imds vs nginx on loopback: {s['cpus']} CPUs, servers pinned to CPU {s['server_cpu']}"
        f", wrk on {s['load_cpus']}; {s['connections']} connections; median of "
        f"{s['rounds']} rounds x {s['duration']:g} s",
        "",
        f"{'scenario':<44}{'server':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU µs/req':>12}{'req/s ratio':>13}{'CPU ratio':>11}",
    ]
    for scenario in SCENARIOS:
        part = report["throughput"].get(scenario.key)
        if part is None:
            continue
        for server in ("nginx", "imds"):
            m = part[server]["median"]
            ratio = f"{part['ratio']:.2f}x" if server == "imds" else ""
            cpu_ratio = f"{part['cpu_ratio']:.2f}x" if server == "imds" else ""
            title = scenario.title if server == "nginx" else ""
            lines.append(f"{title:<44}{server:<8}{m['requests_per_second']:>9,.0f}"
                         f"{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
                         f"{m['cpu_us_per_request']:>12.0f}{ratio:>13}{cpu_ratio:>11}")
        if scenario.requests_per_unit > 1:
            lines.append(f"{'':<44}(sequences/s: nginx "
                         f"{part['nginx']['median']['per_second']:,.0f}, imds "
                         f"{part['imds']['median']['per_second']:,.0f}; latency per request)")
    lines.append("(req/s ratio: imds req/s / nginx req/s; CPU ratio: nginx CPU per request / "
                 "imds CPU per request, steadier when other tenants share the machine)")
    for key in ("floor", "floor_close"):
        floor = report["throughput"][key]
        lines.append(f"reference: {floor['title']}: {floor['requests_per_second']:,.0f} "
                     f"req/s, p99 {floor['result']['p99_ms']:.2f} ms, "
                     f"{floor['result']['cpu_us_per_request']:.0f} CPU µs/req")
    lines.append("")
    if "memory" not in report:
        return "\n".join([*lines, *_target_lines(report)])
    mem = report["memory"]
    lines.append(f"RSS after 1,000 token PUTs {mem['rss_after_1000_mib']:.1f} MiB, after "
                 f"{mem['puts']:,} {mem['rss_after_all_mib']:.1f} MiB: "
                 f"{mem['growth_mib']:+.1f} MiB (goal within 5 MB; "
                 f"{mem['puts_per_second']:,.0f} PUTs/s, {mem['non_200']} non-200)")
    sts = report["sts"]
    lines.append(f"STS AssumeRole calls, imds start + {sts['clients']:,} concurrent cold "
                 f"clients: {sts['assume_role_calls']} (goal 1); {sts['succeeded']:,} got "
                 f"credentials, p50 {sts['p50_ms']:.0f} ms, p99 {sts['p99_ms']:.0f} ms, "
                 f"all within {sts['wall_seconds']:.1f} s")
    up = report["startup"]
    lines.append(f"start to first credential (embedded default): first start "
                 f"{up['first_start_median']:.2f} s, later starts "
                 f"{up['later_start_median']:.2f} s, worst {up['worst']:.2f} s (goal < 1 s)")
    return "\n".join([*lines, "", *_target_lines(report)])


def _target_lines(report: dict[str, Any]) -> list[str]:
    return ["targets:", *(f"  {name}: {target['value']} -> {verdict(target['met'])}"
                          for name, target in report["targets"].items())]


def targets(report: dict[str, Any]) -> dict[str, Any]:
    t = report["throughput"]
    out: dict[str, Any] = {}
    ran = [scenario for scenario in SCENARIOS if scenario.key in t]
    for scenario in ran:
        if scenario.ratio_target:
            ratio = t[scenario.key]["ratio"]
            out[f"credential GET >= {TARGET_RATIO}x nginx ({scenario.title})"] = {
                "value": f"{ratio:.2f}x", "met": ratio >= TARGET_RATIO}
    for scenario in ran:
        p99 = t[scenario.key]["imds"]["median"]["p99_ms"]
        out[f"imds p99 <= {TARGET_P99_MS:g} ms ({scenario.title})"] = {
            "value": f"{p99:.2f} ms", "met": p99 <= TARGET_P99_MS}
    if "memory" not in report:
        return out
    mem = report["memory"]
    out["RSS growth over 1,000 -> 1,000,000 PUTs <= 5 MB"] = {
        "value": f"{mem['growth_mib']:+.1f} MiB", "met": mem["growth_mib"] * 1.048576 <= 5}
    sts = report["sts"]
    out["STS calls for 1,000 cold clients == 1"] = {
        "value": str(sts["assume_role_calls"]),
        "met": sts["assume_role_calls"] == 1 and sts["succeeded"] == sts["clients"]}
    up = report["startup"]
    out["start to first credential < 1 s"] = {"value": f"{up['worst']:.2f} s (worst)",
                                              "met": up["worst"] < 1.0}
    return out


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError:
            return "not found"
        return (done.stdout + done.stderr).strip().splitlines()[0]

    import aiohttp
    import uvloop

    return {"python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "uvloop": uvloop.__version__, "nginx": first_line(["nginx", "-v"]),
            "wrk": first_line(["wrk", "-v"]), "kernel": platform.release()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--puts", type=int, default=1_000_000)
    parser.add_argument("--cold-clients", type=int, default=1000)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "results.json"))
    parser.add_argument("--quick", action="store_true",
                        help="one short round, 100,000 PUTs: a smoke run, not a result")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--only", action="append", default=[], metavar="SCENARIO",
                        choices=[scenario.key for scenario in SCENARIOS],
                        help="run this wrk scenario (repeatable) and skip the memory, STS "
                             "and start-up parts")
    options = parser.parse_args()
    if options.quick:
        options.duration, options.rounds, options.puts, options.starts = 2.0, 1, 100_000, 1
    ensure_tools(not options.no_install)

    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {"connections": options.connections, "duration": options.duration,
                     "rounds": options.rounds, "cpus": len(procs.CPUS),
                     "server_cpu": procs.SERVER_CPU, "load_cpus": procs.LOAD_CPUS,
                     "quick": options.quick, "only": options.only},
        "versions": versions(),
        "loadavg_before": loadavg(),
    }
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imds-bench-") as tmp:
        work = Path(tmp)
        print("throughput and latency (wrk)", flush=True)
        scenarios = tuple(s for s in SCENARIOS if not options.only or s.key in options.only)
        report["throughput"] = throughput(work, options, scenarios)
        if not options.only:
            print(f"memory: {options.puts:,} token PUTs", flush=True)
            report["memory"] = memory(work, options)
            print(f"STS calls: {options.cold_clients:,} cold clients", flush=True)
            report["sts"] = sts_calls(work, options)
            print("start to first credential", flush=True)
            report["startup"] = startup(work, options)
    report["loadavg_after"] = loadavg()
    report["seconds"] = time.perf_counter() - began
    report["targets"] = targets(report)
    print()
    print(table(report))
    print(f"\n(load average before {report['loadavg_before']}, after "
          f"{report['loadavg_after']}; {report['seconds']:.0f} s in all)")
    Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {options.json}")


if __name__ == "__main__":
    main()

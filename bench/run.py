"""Run the benchmarks and write docs/benchmarks.md (see bench/README.md).

    bench/run.sh                      # everything (~15 min), then the report
    bench/run.sh --quick              # a subset (~3 min)
    bench/run.sh --scenario fanout    # one scenario (repeatable); merges into earlier results
    bench/run.sh --systems ours,raw   # only these systems
    bench/run.sh --report-only        # re-render docs/benchmarks.md from bench/results/
    bench/run.sh --scenario brokers --brokers redis,nats --rounds 1   # scenario 6, some brokers

Runs inside a private network namespace (``unshare --net``) when it can: its loopback is
ours alone (no port clashes with other work on the machine) and its TCP congestion control
can be set to Reno, because the machine's default, BBR, paces and stalls loopback fan-out
of small frames (it learns a low bandwidth from delayed-ACK round trips). Scenario 6
(cross-node) is the exception: it needs the broker servers on the machine's loopback, so it
runs in the machine's namespace (a run of several scenarios runs the others in a child
process inside the namespace first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
import systems  # noqa: E402

RESULTS_FILE = harness.RESULTS / "results.json"
NETNS_ENV = "BENCH_IN_NETNS"


def can_netns() -> bool:
    """Whether this process may make a private network namespace (and is not in one)."""
    if os.environ.get(NETNS_ENV) or os.environ.get("BENCH_NO_NETNS"):
        return False
    if os.geteuid() != 0 or not _which("unshare") or not _which("ip"):
        print("note: not root or no unshare/ip: running in the machine's network namespace",
              flush=True)
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        print("note: unshare --net refused: running in the machine's network namespace",
              flush=True)
        return False
    return True


def netns_argv(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command that runs this script with ``argv`` in a fresh network namespace."""
    env = dict(os.environ, **{NETNS_ENV: "1"})
    script = os.path.abspath(sys.argv[0])
    return ["unshare", "--net", "--", sys.executable, script, *argv], env


def enter_netns() -> None:
    """Re-exec this script in a fresh network namespace, if we may."""
    if can_netns():
        argv, env = netns_argv(sys.argv[1:])
        os.execvpe(argv[0], argv, env)


def setup_netns() -> dict[str, str]:
    info = {"netns": "machine"}
    if os.environ.get(NETNS_ENV):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        info["netns"] = "private (unshare --net)"
        for cc in ("reno", "cubic"):
            try:
                Path("/proc/sys/net/ipv4/tcp_congestion_control").write_text(cc)
                break
            except OSError:
                continue
    try:
        info["congestion_control"] = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        info["congestion_control"] = "?"
    return info


def _which(cmd: str) -> str | None:
    from shutil import which
    return which(cmd)


def setup_process(cfg: harness.Config) -> dict[str, str]:
    """Pin ourselves (publisher, subscriber workers) to the load-generator core and raise
    our priority (servers inherit it) so that other work on the machine disturbs less."""
    info = {}
    os.sched_setaffinity(0, {cfg.gen_core})
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -20)
        info["nice"] = "-20 (server and load generator)"
    except OSError:
        info["nice"] = "0"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cfg.fd_limit = hard
    return info


def load_results() -> dict:
    try:
        return json.loads(RESULTS_FILE.read_text())
    except (OSError, ValueError):
        return {"scenarios": {}}


def merge(old: dict | None, new: dict) -> dict:
    """A run of some systems replaces their rows and keeps the other systems' rows from an
    earlier run of the same scenario in the same mode (quick or full)."""
    if not old or old.get("mode") != new.get("mode") or "runs" not in new or "runs" not in old:
        return new
    ran = {r.get("system") for r in new["runs"]}
    kept = [r for r in old["runs"] if r.get("system") not in ran]
    if kept:
        new = dict(new, runs=kept + new["runs"],
                   systems=sorted(set(old.get("systems", [])) | set(new.get("systems", []))),
                   when=f"{new.get('when', '?')} (other systems' rows from an earlier run)")
    return new


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset that runs in ~3 minutes")
    ap.add_argument("--scenario", action="append", default=[],
                    help=f"run only this scenario (repeatable): {', '.join(scenarios.SCENARIOS)}")
    ap.add_argument("--systems", default="", help="comma-separated systems (default: all available)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", default=str(systems.ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--fresh", action="store_true", help="drop earlier results first")
    ap.add_argument("--brokers", default="",
                    help="scenario 6: comma-separated brokers (default: redis,nats,amqp,postgresql)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="scenario 6: rounds per broker; the best round counts (default 2)")
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.report_only:
        report.write(load_results(), Path(args.out))
        print(f"wrote {args.out}")
        return 0

    names = args.scenario or [n for n, s in sorted(scenarios.SCENARIOS.items(),
                                                    key=lambda kv: (kv[1].number == 0, kv[1].number))
                              if (s.in_quick or not args.quick) and not s.optional]
    for n in names:
        if n not in scenarios.SCENARIOS:
            ap.error(f"unknown scenario {n}")
    # Scenario 6 reaches the broker servers on the machine's loopback, which a private
    # namespace cannot: the other scenarios run first in a child inside the namespace,
    # then this process runs those in the machine's namespace and writes the report.
    outside = [n for n in names if not scenarios.SCENARIOS[n].netns]
    inside = [n for n in names if n not in outside]
    if outside and inside and can_netns():
        argv = [a for a in sys.argv[1:]
                if a != "--scenario" and a not in names and not a.startswith("--scenario=")]
        argv = [*argv, "--no-report"] + [x for n in inside for x in ("--scenario", n)]
        child, env = netns_argv(argv)
        rc = subprocess.run(child, env=env).returncode
        if rc != 0:
            return rc
        args.fresh = False  # the child started afresh if asked
        names = outside
    elif inside:
        enter_netns()
    cfg = harness.Config(quick=args.quick, rounds=args.rounds,
                         brokers=[b for b in args.brokers.split(",") if b])
    env_info = setup_netns()
    env_info.update(setup_process(cfg))

    wanted = [s for s in args.systems.split(",") if s]
    chosen = []
    for name in systems.ORDER:
        s = systems.SYSTEMS[name]
        if wanted and name not in wanted:
            continue
        if not s.available():
            print(f"skipping {name}: not available", flush=True)
            continue
        chosen.append(s)

    results = {"scenarios": {}} if args.fresh else load_results()
    results.setdefault("scenarios", {})
    machine = report.machine_info(env_info, cfg)
    if any(scenarios.SCENARIOS[n].netns for n in names) or "machine" not in results:
        results["machine"] = machine
    results["versions"] = {s.name: {"label": s.label, "version": s.version(), "notes": s.notes,
                                    "available": s.available()}
                           for s in systems.SYSTEMS.values() if s.group != "runtime"}
    t_all = time.monotonic()
    for n in names:
        sc = scenarios.SCENARIOS[n]
        t0 = time.monotonic()
        scenarios.log(f"=== scenario {sc.number}: {sc.title}")
        r = sc.run(cfg, chosen)
        r["mode"] = "quick" if cfg.quick else "full"
        r["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
        r["seconds"] = time.monotonic() - t0
        r["systems"] = [s.name for s in chosen]
        r["network"] = {k: env_info[k] for k in ("netns", "congestion_control") if k in env_info}
        results["scenarios"][n] = merge(results["scenarios"].get(n), r)
        harness.RESULTS.mkdir(parents=True, exist_ok=True)
        RESULTS_FILE.write_text(json.dumps(results, indent=1, default=str))
        scenarios.log(f"=== {sc.title}: {r['seconds']:.0f} s")
    results["last_run_seconds"] = time.monotonic() - t_all
    RESULTS_FILE.write_text(json.dumps(results, indent=1, default=str))
    if args.no_report:
        return 0
    report.write(results, Path(args.out))
    scenarios.log(f"wrote {args.out} ({results['last_run_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

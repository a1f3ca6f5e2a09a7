"""Profile a server under the fan-out load with py-spy: where the time per delivery goes.

    bench/.venv/bin/python bench/profile.py [--system ours] [--n 1000] [--seconds 8]

Starts the server pinned to the server core, N WebSocket subscribers and the publisher as
in scenario 1, records the server with ``py-spy record`` (``--native``: with C frames, but py-spy then
pauses the server for each sample) while it fans out, and
prints the functions with the most samples (self and inclusive), plus the raw collapsed
stacks in bench/results/profile-SYSTEM-N.txt (load them in speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import loadgen  # noqa: E402
import run  # noqa: E402
from systems import SYSTEMS  # noqa: E402


def summarize(path: Path, top: int) -> str:
    r = harness.pyspy_summary(path, top)
    out = [f"{r['samples']} samples", "", "self time:"]
    out += [f"  {pct:5.1f}%  {f}" for f, pct in r["self"]]
    out += ["", "inclusive time:"]
    out += [f"  {pct:5.1f}%  {f}" for f, pct in r["inclusive"]]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", default="ours")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--transport", default="ws")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--paced", type=float, default=0,
                    help="publish at this many messages/s instead of as fast as possible")
    ap.add_argument("--native", action="store_true",
                    help="C frames too (py-spy then pauses the server per sample: slower)")
    args = ap.parse_args()
    run.enter_netns()
    run.setup_netns()
    cfg = harness.Config()
    run.setup_process(cfg)
    system = SYSTEMS[args.system]
    out = harness.RESULTS / f"profile-{args.system}-{args.transport}-{args.n}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    pyspy = str(BENCH / ".venv" / "bin" / "py-spy")
    with harness.running(system, cfg, "profile") as srv, \
            harness.generator(cfg, harness.workers_for(args.n, cfg)) as gen:
        c = harness.connect(gen, srv, system, args.n, args.transport)
        print("connected", c["ok"])

        async def go() -> dict:
            pub = await harness.open_publisher(system, srv)
            gen.reset("count", cfg.tick)
            await loadgen.fanout(pub, gen, c["ok"], 1.0, max(2, 20_000 // c["ok"]))
            gen.reset("count", cfg.tick)
            spy = subprocess.Popen(
                [pyspy, "record", *(["--native"] if args.native else ["--nonblocking"]),
                 "-r", str(args.rate),
                 "-d", str(int(args.seconds)), "-f", "raw", "-o", str(out), "-p", str(srv.pid)],
                stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "w"))  # noqa: SIM115
            time.sleep(0.5)
            if args.paced:
                r = await loadgen.paced(pub, gen, c["ok"], args.paced, int(args.paced * args.seconds))
                r["rate"] = r["delivered"] / r["seconds"]
            else:
                r = await loadgen.fanout(pub, gen, c["ok"], args.seconds,
                                         max(2, 20_000 // c["ok"]), server_pid=srv.pid)
            spy.wait(30)
            pub.close()
            return r

        r = asyncio.run(go())
        print(f"{r['rate']:,.0f} deliveries/s while profiled (py-spy slows the server)")
    print(summarize(out, args.top))
    print(f"\ncollapsed stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

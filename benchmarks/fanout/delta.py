#!/usr/bin/env python3
"""Delta updates and permessage-deflate on the fan-out benchmark's update stream (README.md, "Delta updates and
compression"): the listener (`runner engine`) and the same C load harness, four ways of sending the same stream:

  full            today's progress.update frames (the baseline of the same run)
  deflate         the same frames with permessage-deflate (ws_deflate on, the clients offer it)
  delta           subscribe with "delta": true: RFC 7386 merge patches against the client's last state
  delta + deflate both

For each N it reports the bytes per delivery on the wire (frame headers included, after compression), the
server's CPU per delivery (its threads but the runner's, as run.py counts it), latency, and the server's RSS per
connection idle and subscribed (what permessage-deflate costs a connection), then the verdicts against the
issue's goals: delta <= 10 % of full bytes, below every figure of Centrifugo's table, at no more CPU per
delivery than full frames (the median over the interleaved rounds of each round's CPU over full's).

    make -C benchmarks/fanout && python3 benchmarks/fanout/delta.py [--n 100,1000] [--fixed-seconds 5]
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as fan  # noqa: E402  (the fan-out benchmark's processes and measurements)

MODES = [  # name, loadclient flags, ws_deflate
    ("full", "", False),
    ("deflate", "deflate", True),
    ("delta", "delta", False),
    ("delta + deflate", "delta,deflate", True),
]
# Centrifugo's published sizes for its protocol, as a share of full JSON.
CENTRIFUGO = [("permessage-deflate", 38.9), ("Fossil delta", 15.0), ("both", 13.3), ("protobuf + delta", 10.7)]
GOAL_DELTA_SHARE = 10.0


def cell(mode, flags, deflate, n, seconds):
    k, period_ms = fan.load_plan(n)
    config = fan.NO_SAMPLER + (',"ws_deflate":true' if deflate else "")
    server = fan.Server("listener", n, 100, config, None, None)
    client = None
    out = {"mode": mode, "n": n, "k": k}
    try:
        time.sleep(0.5)
        rss0 = fan.rss_kib(server.pid)
        argv = ["./loadclient", "ws", str(server.port), str(n), str(fan.TASKS), str(k)] + ([flags] if flags else [])
        client = fan.Proc(argv, f"loadclient {mode} {n}")
        conn = client.expect("CONNECTED", 150)
        time.sleep(1.0)
        out["idle_kib_per_conn"] = (fan.rss_kib(server.pid) - rss0) / max(1, conn["open"])
        client.send("sub")
        client.expect("SUBSCRIBED", 120)
        time.sleep(1.0)
        out["subscribed_kib_per_conn"] = (fan.rss_kib(server.pid) - rss0) / max(1, conn["open"])
        out["fixed"] = fan.measure(server, client, seconds, period_ms)
        m = fan.listener_metrics(server.port)
        out["patches"] = m.get("progress_delta_patches_total", 0)
        out["delta_fulls"] = m.get("progress_delta_full_states_total", 0)
    finally:
        if client:
            client.stop()
        server.stop()
    return out


def cpu(run):
    return run["fixed"]["cpu_us_per_delivery"]


def cpu_ratios(runs, n, mode):
    """A mode's CPU per delivery over full frames' in the same round, one ratio per round (`fan.paired_ratios`)."""
    return fan.paired_ratios([r for r in runs if r["n"] == n], lambda r: r["mode"], mode, "full", cpu)


def table(results, runs):
    head = ("| mode            | N     | bytes/deliv | % of full | CPU-us/deliv | vs full CPU | deliv/s | p50 ms | p99 ms "
            "| idle KiB/conn | subscribed KiB/conn |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in results:
        f = r["fixed"]
        base = next(x for x in results if x["n"] == r["n"] and x["mode"] == "full")["fixed"]
        lines.append(
            f"| {r['mode']:<15} | {r['n']:<5,} | {f['wire_bytes']:>11,.1f} | {100 * f['wire_bytes'] / base['wire_bytes']:>8.1f}% "
            f"| {f['cpu_us_per_delivery']:>12.2f} | {fan.median(cpu_ratios(runs, r['n'], r['mode'])):>10.2f}x "
            f"| {f['rate']:>7,.0f} | {f['p50_ms']:>6.2f} | {f['p99_ms']:>6.2f} | {r['idle_kib_per_conn']:>13.2f} "
            f"| {r['subscribed_kib_per_conn']:>19.2f} |")
    return "\n".join(lines)


def verdicts(results, runs):
    out = []
    for n in sorted({r["n"] for r in results}):
        by = {r["mode"]: r["fixed"] for r in results if r["n"] == n}
        full = by["full"]
        for mode in ("delta", "delta + deflate", "deflate"):
            share = 100 * by[mode]["wire_bytes"] / full["wire_bytes"]
            best = min(v for _, v in CENTRIFUGO)
            ok = share <= GOAL_DELTA_SHARE and share < best
            out.append(f"N={n:,} {mode}: {share:.1f}% of full bytes (goal <= {GOAL_DELTA_SHARE:.0f}%, below "
                       f"Centrifugo's best {best}%): {'met' if ok else 'MISSED'} "
                       f"({share / GOAL_DELTA_SHARE:.2f}x the goal)")
            ratios = cpu_ratios(runs, n, mode)
            ratio = fan.median(ratios)
            out.append(f"N={n:,} {mode}: CPU per delivery {ratio:.2f}x full's, the median of {len(ratios)} rounds "
                       f"({', '.join(f'{x:.2f}' for x in ratios)}; medians {by[mode]['cpu_us_per_delivery']:.2f} vs "
                       f"{full['cpu_us_per_delivery']:.2f} us; goal <= 1.00x): {'met' if ratio <= 1.0 else 'MISSED'}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="100,1000")
    ap.add_argument("--fixed-seconds", type=float, default=5)
    ap.add_argument("--quiet-wait", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of every mode, interleaved; the table shows each cell's median by CPU per delivery")
    ap.add_argument("--json")
    args = ap.parse_args()
    os.chdir(HERE)
    results = []
    redone = []
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory():
            for n in [int(x) for x in args.n.split(",")]:
                for round_ in range(args.rounds):
                    for mode, flags, deflate in MODES:
                        def once():
                            fan.wait_quiet(args.quiet_wait)
                            fan.log(f"{mode} N={n} round {round_ + 1}/{args.rounds} ...")
                            out = dict(cell(mode, flags, deflate, n, args.fixed_seconds), round=round_)
                            return out, out["fixed"]
                        out = fan.rerun_while_busy(once, f"{mode} N={n} round {round_ + 1}", redone)
                        results.append(out)
    finally:
        fan.Proc.stop_all()
    runs = results
    results = [fan.median_run([r for r in runs if r["n"] == n and r["mode"] == mode], cpu)
               for n in dict.fromkeys(r["n"] for r in runs) for mode, _, _ in MODES]
    print(f"Delta updates and permessage-deflate: M={fan.TASKS} tasks, fixed load {fan.FIXED_DELIVERIES:,} "
          f"deliveries/s for {args.fixed_seconds:.0f} s (throttle_ms 100, resource sampler off), the same runner "
          f"stream in every row; {args.rounds} interleaved runs per row, the median (by CPU per delivery) shown, "
          f"'vs full CPU' the median over rounds of the row's CPU over full's in the same round; "
          f"{time.monotonic() - t0:.0f} s in all.\n")
    print(table(results, runs))
    print()
    print("Centrifugo's table (share of full JSON): full 100%, " +
          ", ".join(f"{name} {v}%" for name, v in CENTRIFUGO))
    print()
    print(verdicts(results, runs))
    print()
    print("Every run (CPU-us/deliv, other load in cores):")
    for n in dict.fromkeys(r["n"] for r in runs):
        for mode, _, _ in MODES:
            cells = [r["fixed"] for r in runs if r["n"] == n and r["mode"] == mode]
            print(f"  {mode} N={n}: " + ", ".join(f"{c['cpu_us_per_delivery']:.2f} ({c['other_load_cores']:.2f})"
                                                  for c in cells))
    if redone:
        print(fan.redone_note(redone))
    print()
    for r in results:
        f = r["fixed"]
        print(f"{r['mode']} N={r['n']}: payload {f['payload_bytes']:.1f} B/deliv, {f['deliveries']:,} deliveries, "
              f"patches built {r['patches']:.0f}, full states to delta clients {r['delta_fulls']:.0f}, "
              f"server CPU {f['server_cpu_share']:.2f} cores, client {f['client_cpu_share']:.2f}, "
              f"other load {f['other_load_cores']:.2f} cores")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(runs, fh, indent=2)


if __name__ == "__main__":
    main()

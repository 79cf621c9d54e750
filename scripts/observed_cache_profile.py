#!/usr/bin/env python3
"""Counts what a read costs the two servers of `dsf-bench --observed-only` under callgrind.

Instructions (and, with --cache-sim, simulated cache misses) per read, for the server with
the audit log and metrics off and the one with both on. Counts, unlike times, repeat for the
same binary and load whatever else the machine does, so small differences show.

    cargo build --release -p dsf-bench -p dsf-bin
    scripts/observed_cache_profile.py [--cache-sim] [--release-dir target/release]

Function names need no debug info; for source lines, build with
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only (in a target directory of its own) and read the
profiles it leaves with callgrind_annotate. Needs valgrind (Debian's package).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# One call per answer, with or without the audit log: what "per read" divides by.
PER_READ = "dsf_fhir::server::reply::Reply::render"
# Only the audited server runs this (its writer thread's loop, never inlined).
AUDITED = "dsf_fhir::server::audit::write_batches"
EVENT_NAMES = {
    "Ir": "instructions",
    "I1mr": "L1 instruction misses",
    "D1mr": "L1 data read misses",
    "D1mw": "L1 data write misses",
    "ILmr": "last-level instruction misses",
    "DLmr": "last-level data read misses",
    "DLmw": "last-level data write misses",
}


def read_profile(path):
    """The profile's event totals, its calls to PER_READ, and whether it is the audited one."""
    names = {}
    events, totals = [], []
    calls, audited, callee = 0, False, None
    with open(path, encoding="utf-8", errors="replace") as profile:
        for line in profile:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                totals = [int(v) for v in line.split()[1:]]
            elif line.startswith(("fn=", "cfn=")):
                match = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if match:
                    if match.group(2) is not None:
                        names[match.group(1)] = match.group(2)
                    name = names.get(match.group(1), "")
                    audited = audited or AUDITED in name
                    if line.startswith("cfn="):
                        callee = name
            elif line.startswith("calls="):
                if callee is not None and PER_READ in callee:
                    calls += int(line[len("calls="):].split()[0])
    return dict(zip(events, totals)), calls, audited


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release-dir", default="target/release")
    parser.add_argument("--cache-sim", action="store_true", help="simulate the caches too")
    parser.add_argument("--seconds", type=int, default=16, help="time profiled in the turns")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install Debian's valgrind package")
    release = os.path.abspath(args.release_dir)
    for binary in ("dsf-bench", "dsf-fhir-server"):
        if not os.access(os.path.join(release, binary), os.X_OK):
            sys.exit(f"no {binary} in {release}: cargo build --release -p dsf-bench -p dsf-bin")

    work = tempfile.mkdtemp(prefix="dsf-observed-callgrind-")
    # dsf-bench starts the dsf-fhir-server next to itself: here, valgrind around the real one.
    shutil.copy(os.path.join(release, "dsf-bench"), work)
    wrapper = os.path.join(work, "dsf-fhir-server")
    options = "--cache-sim=yes " if args.cache_sim else ""
    with open(wrapper, "w", encoding="utf-8") as script:
        script.write(
            "#!/bin/sh\n"
            f"exec valgrind --tool=callgrind {options}--callgrind-out-file={work}/cg.%p "
            f"{os.path.join(release, 'dsf-fhir-server')} \"$@\"\n"
        )
    os.chmod(wrapper, 0o755)

    log_path = os.path.join(work, "bench.log")
    with open(log_path, "w", encoding="utf-8") as log:
        bench = subprocess.Popen(
            [os.path.join(work, "dsf-bench"), "--observed-only",
             "--seconds", str(args.seconds + 14),
             "--concurrency", str(args.clients)],
            stdout=log, stderr=subprocess.STDOUT, cwd=work)
    deadline = time.time() + 600
    while "in turns" not in open(log_path, encoding="utf-8").read():
        if bench.poll() is not None or time.time() > deadline:
            sys.exit(f"the observed run did not reach its turns; see {log_path}")
        time.sleep(1)
    # Start-up, the writes and the warm-up are behind: count the turns only.
    time.sleep(3)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(["callgrind_control", "-z"], check=True, **quiet)
    time.sleep(args.seconds)
    subprocess.run(["callgrind_control", "-d"], check=True, **quiet)
    bench.wait()

    profiles = sorted(f for f in os.listdir(work) if re.fullmatch(r"cg\.\d+\.1", f))
    sides = {}
    for name in profiles:
        totals, calls, audited = read_profile(os.path.join(work, name))
        if calls:
            sides["on" if audited else "off"] = (totals, calls, name)
    if set(sides) != {"off", "on"}:
        sys.exit(f"expected a profile of each server in {work}, found {profiles}")
    off, on = sides["off"], sides["on"]
    print(f"Profiles in {work}: off {off[2]} ({off[1]} reads), on {on[2]} ({on[1]} reads)\n")
    print("| per read | off | on | on − off |")
    print("|---|---:|---:|---:|")
    for event, label in EVENT_NAMES.items():
        if event not in off[0]:
            continue
        a, b = off[0][event] / off[1], on[0][event] / on[1]
        # Below ten per read a percentage says nothing.
        change = f" ({(b - a) / a * 100:+.1f} %)" if a >= 10 else ""
        print(f"| {label} | {a:,.0f} | {b:,.0f} | {b - a:+,.0f}{change} |")


if __name__ == "__main__":
    main()

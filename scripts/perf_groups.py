#!/usr/bin/env python3
"""Splits a `perf script` dump of `dsf bench` into cost groups (docs/performance.md).

Usage: perf script -i perf.data | scripts/perf_groups.py [requests]

Each sample goes to the first group whose rule matches any frame of its stack. With the number
of requests served while perf recorded, it also prints samples per 1,000 requests.
"""
import collections
import sys

LOAD_GENERATOR = ["dsf_fhir::client", "role::Client", "tokio_rustls::client",
                  "rustls::client", "dsf_bin::load::workers", "read_task", "hyper::client"]
SERVER_TRANSPORT = ["role::Server", "tokio_rustls::server", "rustls::server",
                    "trivial_server", "hyper::server", "dsf_fhir::server::connections"]
GROUPS = [
    ("SQLite statement", ["sqlite3", "rusqlite"]),
    ("PostgreSQL client", ["tokio_postgres", "postgres_protocol", "postgres_types"]),
    ("store", ["dsf_fhir::store"]),
    ("load generator", LOAD_GENERATOR),
    ("request handling in the server", ["FhirServer::respond", "FhirServer::handle"]),
    ("server transport", SERVER_TRANSPORT),
    ("tokio scheduler and I/O driver", ["tokio::runtime"]),
]


def group(sample):
    command, frames = sample
    if command == "postgres":
        return "PostgreSQL server"
    for name, keys in GROUPS:
        if any(key in frame for frame in frames for key in keys):
            return name
    return "other"


def samples(lines):
    """(command, frames) of each sample."""
    command, frames = "", []
    for line in lines:
        if not line.strip():
            if frames:
                yield command, frames
            frames = []
        elif line[0] in " \t":
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1])
        else:
            command, frames = line.split(None, 1)[0], []
    if frames:
        yield command, frames


def main():
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    counts = collections.Counter(group(sample) for sample in samples(sys.stdin))
    total = sum(counts.values())
    for name, n in counts.most_common():
        per_request = f"  {1000 * n / requests:7.2f} per 1,000 requests" if requests else ""
        print(f"{name:32s} {n:6d} {100 * n / max(total, 1):5.1f}%{per_request}")
    print(f"{'all':32s} {total:6d}")


if __name__ == "__main__":
    main()

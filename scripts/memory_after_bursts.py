#!/usr/bin/env python3
"""Resident memory of a running `dsf dev up` before, during and after bursts of large and
hostile requests, as an operator would see it.

Usage: scripts/memory_after_bursts.py <dev-network dir> <pid of dsf dev up> [rounds]

Each round sends, from threads at once, to the first organisation's FHIR server with its own
client certificate: four Tasks with 380,000 inputs (about 15 MiB each), four with 30,000
inputs, four bodies over the size limit, deeply nested XML and queries with 1,000 parameters.
After each round it waits and reads VmRSS of the process again. Only the standard library.
"""
import http.client
import json
import os
import ssl
import sys
import threading
import time


def rss_kib(pid, field="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def task_with_inputs(n):
    inputs = ",".join('{"type":{"text":"x"},"valueString":"y"}' for _ in range(n))
    return ('{"resourceType":"Task","status":"requested","intent":"order","input":[%s]}' % inputs).encode()


def deep_xml(levels):
    return ('<Task xmlns="http://hl7.org/fhir">' + '<extension url="http://x">' * levels
            + "</extension>" * levels + '<status value="draft"/><intent value="order"/></Task>').encode()


def request(org, ca, method, path, body=None, content_type=None):
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(org["client_certificate"], org["client_key"])
    base = org["fhir_base_url"]
    host_port = base.split("//", 1)[1].split("/", 1)[0]
    prefix = "/" + base.split("//", 1)[1].split("/", 1)[1]
    host, port = host_port.split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=120)
    headers = {"accept": "application/fhir+json"}
    if content_type:
        headers["content-type"] = content_type
    try:
        conn.request(method, f"{prefix}/{path}", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except Exception as e:  # a refused or reset request is part of the burst
        return str(e)[:60]
    finally:
        conn.close()


def burst(org, ca):
    big = task_with_inputs(380_000)
    parsed = task_with_inputs(30_000)
    oversized = b"{" + b" " * (64 * 1024 * 1024) + b"}"
    many = "&".join(f"identifier=x{i}" for i in range(1_000))
    jobs = (
        [("POST", "Task", big, "application/fhir+json")] * 4
        + [("POST", "Task", parsed, "application/fhir+json")] * 4
        + [("POST", "Task", oversized, "application/fhir+json")] * 4
        + [("POST", "Task", deep_xml(700), "application/fhir+xml")] * 4
        + [("GET", f"Task?{many}", None, None)] * 4
    )
    statuses = [None] * len(jobs)

    def run(i, job):
        statuses[i] = request(org, ca, *job)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def main():
    directory, pid = sys.argv[1], int(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    network = json.load(open(os.path.join(directory, "network.json")))
    ca = network["ca_certificate"]
    org = network["organizations"][0]
    def now():
        return f"{rss_kib(pid) / 1024:.1f} MiB (anonymous {rss_kib(pid, 'RssAnon:') / 1024:.1f} MiB)"

    print(f"idle: {now()}")
    for r in range(1, rounds + 1):
        os.system(f"echo 5 > /proc/{pid}/clear_refs 2>/dev/null")
        statuses = burst(org, ca)
        peak = rss_kib(pid, "VmHWM:")
        time.sleep(5)
        after5 = now()
        time.sleep(25)
        print(f"round {r}: statuses {sorted(set(map(str, statuses)))}; peak {peak / 1024:.1f} MiB; "
              f"5 s later {after5}; 30 s later {now()}")


if __name__ == "__main__":
    main()

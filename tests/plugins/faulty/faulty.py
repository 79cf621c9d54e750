#!/usr/bin/env python3
"""A plugin for the BPE's fault tests: its one service task does what the start Task's
`mode` input says: nothing (ok), sleep, write garbage to the BPE, or exit mid-call."""

import os
import sys
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "plugins", "python"))

from dsf_plugin import Plugin, read, task_input  # noqa: E402

FAULTY = "http://test.org/fhir/CodeSystem/faulty"

plugin = Plugin("test-faulty", "1.0.0.0", "2026-12-04")
plugin.bpmn("bpe/faulty.bpmn", read("bpe/faulty.bpmn"))
plugin.fhir("testorg_faulty", "fhir/ActivityDefinition-faulty.json",
            read("fhir/ActivityDefinition-faulty.json"))


@plugin.service_task("faulty.Act")
def act(call):
    mode = task_input(call.start_task(), FAULTY, "mode") or "ok"
    call.set("pid", os.getpid())
    if mode == "sleep":
        time.sleep(600)
    elif mode == "garbage":
        sys.stdout.buffer.write(b"\x00\x00\x00\x05hello")
        sys.stdout.buffer.flush()
        time.sleep(600)
    elif mode == "exit":
        os._exit(3)


if __name__ == "__main__":
    plugin.run()

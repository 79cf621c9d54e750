"""SpiffWorkflow side of dsf-bpmn's engine comparison: python bench.py <file> <chain|fanout|message|parse> <seconds>
Prints {"per_second": n}. The BPMN is parsed once and the spec reused, except for "parse"."""
import json
import sys
import time

from SpiffWorkflow.bpmn.parser import BpmnParser
from SpiffWorkflow.bpmn import BpmnWorkflow, BpmnEvent
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.util.task import TaskState


def spec_of(path):
    parser = BpmnParser()
    parser.add_bpmn_file(path)
    return parser.get_spec('p')


def main():
    path, scenario, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline = time.monotonic() + seconds
    count = 0
    if scenario == 'parse':
        while time.monotonic() < deadline:
            spec_of(path)
            count += 1
    else:
        spec = spec_of(path)
        while time.monotonic() < deadline:
            workflow = BpmnWorkflow(spec)
            workflow.do_engine_steps()
            if scenario == 'message':
                workflow.catch(BpmnEvent(MessageEventDefinition('go'), {}))
                workflow.do_engine_steps()
            # Service tasks wait (STARTED) for the host to run them: the no-op handler.
            started = workflow.get_tasks(state=TaskState.STARTED)
            while started:
                for task in started:
                    task.complete()
                workflow.do_engine_steps()
                started = workflow.get_tasks(state=TaskState.STARTED)
            if not workflow.is_completed():
                raise SystemExit(f'{scenario}: workflow did not complete')
            count += 1
    print(json.dumps({'per_second': count / seconds}))


main()

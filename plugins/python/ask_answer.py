#!/usr/bin/env python3
"""The ask-and-answer plugin, written in Python with the standard library only.

Organisation A starts `ask` with a question and the endpoint of organisation B; the question
goes to B as a Task, where `answer` creates a user task (a QuestionnaireResponse showing the
question); once a person at B completes it, the answer goes back to A, and A's start Task
completes with the answer as an output.

Process ids, URLs and codes are example.org's. The plugin file is this script; put it (with
dsf_plugin.py and the bpe/ and fhir/ folders beside it, or a link to it) in the BPE's plugin
directory.
"""

import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from dsf_plugin import (  # noqa: E402
    ENDPOINT_IDENTIFIER, ORGANIZATION_IDENTIFIER, QUESTIONNAIRE_RESPONSE, TARGET, BpmnError,
    Plugin, parameter, read, task_input)

ASK = "http://example.org/fhir/CodeSystem/ask"

plugin = Plugin("example-ask-answer", os.environ.get("EXAMPLE_ASK_ANSWER_VERSION", "1.0.0.0"),
                "2026-12-04")
plugin.bpmn("bpe/ask.bpmn", read("bpe/ask.bpmn"))
plugin.bpmn("bpe/answer.bpmn", read("bpe/answer.bpmn"))
for process, files in {
    "exampleorg_ask": ["ActivityDefinition-ask.json", "StructureDefinition-task-ask.json",
                       "StructureDefinition-task-answer.json", "CodeSystem-ask.json"],
    "exampleorg_answer": ["ActivityDefinition-answer.json", "StructureDefinition-task-question.json",
                          "Questionnaire-answer.json", "CodeSystem-ask.json"],
}.items():
    for name in files:
        plugin.fhir(process, "fhir/" + name, read("fhir/" + name))


def endpoint_target(call, endpoint_identifier):
    """The target of a message to the organisation of an allow-listed endpoint, looked up on
    the local FHIR server (through the BPE)."""
    query = urllib.parse.urlencode({
        "status": "active",
        "identifier": ENDPOINT_IDENTIFIER + "|" + endpoint_identifier,
        "_include": "Endpoint:organization",
    })
    answer = call.fhir("GET", "Endpoint?" + query)
    if not answer.ok():
        raise Exception("Endpoint search answered %d" % answer.status)
    endpoint, organization = None, None
    for entry in answer.json().get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "Endpoint":
            endpoint = resource
        elif resource["resourceType"] == "Organization":
            for identifier in resource.get("identifier", []):
                if identifier.get("system") == ORGANIZATION_IDENTIFIER:
                    organization = identifier["value"]
    if endpoint is None or organization is None:
        raise BpmnError("unknown_endpoint", "no active endpoint " + endpoint_identifier)
    return {"organizationIdentifierValue": organization,
            "endpointIdentifierValue": endpoint_identifier,
            "endpointUrl": endpoint["address"]}


@plugin.service_task("example.python.SelectAnswerer")
def select_answerer(call):
    task = call.start_task()
    call.set("question", task_input(task, ASK, "question"))
    call.set(TARGET, endpoint_target(call, task_input(task, ASK, "answerer")))


def question_inputs(call):
    return [parameter(ASK, "question", "valueString", call.get("question")),
            parameter(ASK, "reply-to", "valueString", call.endpoint["identifier"])]


plugin.message_send("example.python.SendQuestion", additional_inputs=question_inputs)


@plugin.service_task("example.python.RecordAnswer")
def record_answer(call):
    answer = task_input(call.latest_task(), ASK, "answer")
    task = call.start_task()
    task.setdefault("output", []).append(parameter(ASK, "answer", "valueString", answer))
    call.update_start_task(task)


def show_question(call):
    question = task_input(call.start_task(), ASK, "question")
    for item in call.questionnaire_response.get("item", []):
        if item.get("linkId") == "answer":
            item["text"] = "Your answer to: " + question


plugin.user_task_listener("example.python.ShowQuestion", before_create=show_question)


@plugin.service_task("example.python.SelectAsker")
def select_asker(call):
    call.set(TARGET, endpoint_target(call, task_input(call.start_task(), ASK, "reply-to")))


def answer_inputs(call):
    response = call.get(QUESTIONNAIRE_RESPONSE) or {}
    for item in response.get("item", []):
        if item.get("linkId") == "answer":
            return [parameter(ASK, "answer", "valueString", item["answer"][0]["valueString"])]
    raise Exception("the QuestionnaireResponse has no answer")


plugin.message_send("example.python.SendAnswer", additional_inputs=answer_inputs)

if __name__ == "__main__":
    plugin.run()

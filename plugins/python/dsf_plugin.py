"""DSF process plugins in Python: the plugin side of the dsf-rs plugin protocol, version 1.

Standard library only. A plugin file is an executable script that builds a Plugin, registers
its handlers and calls run(); the BPE starts it, sends a hello, receives the definition and
then calls the handlers. See docs/plugin-protocol.md for the protocol and ask_answer.py for a
whole plugin.

    plugin = Plugin("my-plugin", "1.0.0.0", "2026-12-01")
    plugin.bpmn("bpe/my.bpmn", read("bpe/my.bpmn"))

    @plugin.service_task("org.example.Greet")
    def greet(call):
        call.set("greeting", "hello from " + call.organization)

    plugin.run()

Calls are handled one at a time (the definition says maxConcurrentCalls 1), so a handler may
block; FHIR requests go to the BPE, which sends them with the organisation's certificate.
"""

import base64
import json
import os
import struct
import sys

PROTOCOL_VERSION = 1
MAX_FRAME_LENGTH = 64 * 1024 * 1024

# Variables the BPE keeps for every instance.
START_TASK = "dsf.startTask"
RECEIVED_TASKS = "dsf.receivedTasks"
QUESTIONNAIRE_RESPONSE = "dsf.questionnaireResponse"
TARGET = "target"
TARGETS = "targets"
ORGANIZATION_IDENTIFIER = "http://dsf.dev/sid/organization-identifier"
ENDPOINT_IDENTIFIER = "http://dsf.dev/sid/endpoint-identifier"


class BpmnError(Exception):
    """Raised by a handler: caught by an error boundary event with this code."""

    def __init__(self, code, message=""):
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolError(Exception):
    """The BPE sent something this library does not understand."""


def read_frame(stream):
    """One frame: a 4-byte big-endian length and that many bytes of JSON; None at the end."""
    header = stream.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME_LENGTH:
        raise ProtocolError("frame of %d bytes is too large" % length)
    body = stream.read(length)
    if len(body) < length:
        return None
    return json.loads(body.decode("utf-8"))


def write_frame(stream, message):
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    stream.write(struct.pack(">I", len(body)) + body)
    stream.flush()


class FhirAnswer:
    """What a FHIR server answered to a request the BPE carried."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def ok(self):
        return 200 <= self.status < 300


class Call:
    """One handler call: the instance's variables, the element's fields, and FHIR access."""

    def __init__(self, plugin, message):
        self._plugin = plugin
        self.id = message["id"]
        self.handler = message["handler"]
        self.hook = message["hook"]
        context = message.get("context", {})
        self.instance_id = context.get("instanceId")
        self.element_id = context.get("elementId")
        self.business_key = context.get("businessKey")
        self.fields = context.get("fields", {})
        self.variables = dict(context.get("variables", {}))
        self.send = message.get("send")
        self.send_error = message.get("sendError")
        self.questionnaire_response = message.get("questionnaireResponse")
        self.changes = []
        hello = plugin.hello
        self.organization = hello["organization"]
        self.endpoint = hello["endpoint"]
        self.fhir_base_url = hello["fhirBaseUrl"]

    def get(self, name, default=None):
        return self.variables.get(name, default)

    def set(self, name, value):
        """Sets a variable where it lives, else on the instance."""
        self.variables[name] = value
        self.changes.append({"name": name, "value": value, "local": False})

    def set_local(self, name, value):
        """Sets a variable on the element's own scope (a multi-instance iteration)."""
        self.variables[name] = value
        self.changes.append({"name": name, "value": value, "local": True})

    def start_task(self):
        return self.variables.get(START_TASK)

    def update_start_task(self, task):
        """The BPE writes this copy of the start Task when the process ends."""
        self.set(START_TASK, task)

    def latest_task(self):
        received = self.variables.get(RECEIVED_TASKS) or []
        return received[-1] if received else self.start_task()

    def config(self, name, default=None):
        """A configuration value: dev.dsf.x-y is read from DEV_DSF_X_Y."""
        variable = name.replace(".", "_").replace("-", "_").upper()
        return os.environ.get(variable, default)

    def fhir(self, method, path, body=None, base_url=None, headers=None):
        """Sends a FHIR request through the BPE (JSON in and out unless headers say otherwise)."""
        all_headers = {"accept": "application/fhir+json"}
        if body is not None:
            all_headers["content-type"] = "application/fhir+json"
            if not isinstance(body, (bytes, bytearray)):
                body = json.dumps(body).encode("utf-8")
        all_headers.update(headers or {})
        return self._plugin._fhir(
            self.id, base_url or self.fhir_base_url, method, path, list(all_headers.items()), body
        )


class Plugin:
    """A plugin definition and its handlers."""

    def __init__(self, name, version, release_date):
        self.name = name
        self.version = version
        self.release_date = release_date
        self.bpmn_files = []
        self.fhir_files = []
        self.handlers = {}
        self.hello = None
        self._next_request = 1
        self._input = sys.stdin.buffer
        self._output = sys.stdout.buffer

    def bpmn(self, path, contents):
        self.bpmn_files.append({"path": path, "contents": contents})

    def fhir(self, process, path, contents):
        self.fhir_files.append({"process": process, "path": path, "contents": contents})

    def service_task(self, name):
        return self._register(name, "serviceTask", "execute")

    def execution_listener(self, name):
        return self._register(name, "executionListener", "notify")

    def message_send(self, name, additional_inputs=None, after_send=None, on_send_error=None,
                     business_key_strategy="same"):
        """A send task or message throw/end event; each hook is optional."""
        hooks = {}
        if additional_inputs:
            hooks["additionalInputs"] = additional_inputs
        if after_send:
            hooks["afterSend"] = after_send
        if on_send_error:
            hooks["onSendError"] = on_send_error
        self.handlers[name] = ("messageSend", hooks, business_key_strategy)

    def user_task_listener(self, name, before_create=None, after_create=None):
        hooks = {}
        if before_create:
            hooks["beforeCreate"] = before_create
        if after_create:
            hooks["afterCreate"] = after_create
        self.handlers[name] = ("userTaskListener", hooks, None)

    def _register(self, name, kind, hook):
        def decorate(function):
            self.handlers[name] = (kind, {hook: function}, None)
            return function

        return decorate

    def definition(self):
        handlers = []
        for name, (kind, _, strategy) in self.handlers.items():
            declaration = {"name": name, "kind": kind}
            if strategy:
                declaration["businessKeyStrategy"] = strategy
            handlers.append(declaration)
        return {
            "type": "definition",
            "protocol": PROTOCOL_VERSION,
            "name": self.name,
            "version": self.version,
            "releaseDate": self.release_date,
            "bpmn": self.bpmn_files,
            "fhir": self.fhir_files,
            "handlers": handlers,
            "maxConcurrentCalls": 1,
        }

    def run(self):
        """Serves the BPE until it closes standard input."""
        if len(sys.argv) > 1 and sys.argv[1] == "--describe":
            description = self.definition()
            description["bpmn"] = [f["path"] for f in self.bpmn_files]
            description["fhir"] = [f["process"] + ": " + f["path"] for f in self.fhir_files]
            print(json.dumps(description, indent=2))
            return
        hello = read_frame(self._input)
        if not hello or hello.get("type") != "hello":
            raise ProtocolError("the BPE did not start with a hello")
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError("the BPE speaks protocol %s" % hello.get("protocol"))
        self.hello = hello
        write_frame(self._output, self.definition())
        while True:
            message = read_frame(self._input)
            if message is None:
                return
            if message.get("type") == "call":
                write_frame(self._output, self._answer(Call(self, message)))

    def _answer(self, call):
        result = {"type": "result", "id": call.id}
        kind, hooks, _ = self.handlers.get(call.handler, (None, {}, None))
        function = hooks.get(call.hook)
        try:
            if kind is None:
                raise Exception("no handler '%s'" % call.handler)
            if kind in ("messageSend", "userTaskListener") and function is None:
                value = default_hook(call)
            elif function is None:
                raise Exception("'%s' has no hook %s" % (call.handler, call.hook))
            else:
                value = function(call)
            if call.hook == "additionalInputs":
                result["inputs"] = value or []
            if call.hook == "beforeCreate":
                result["questionnaireResponse"] = call.questionnaire_response
        except BpmnError as error:
            result["error"] = {"kind": "bpmn", "code": error.code, "message": error.message}
        except Exception as error:  # a failure of the handler fails the instance
            print("ERROR handler %s failed: %s" % (call.handler, error), file=sys.stderr)
            result["error"] = {"kind": "failed", "message": str(error)}
        result["changes"] = call.changes
        return result

    def _fhir(self, call_id, base_url, method, path, headers, body):
        request_id = self._next_request
        self._next_request += 1
        request = {
            "type": "fhir",
            "id": request_id,
            "call": call_id,
            "baseUrl": base_url,
            "method": method,
            "path": path,
            "headers": headers,
        }
        if body is not None:
            request["body"] = base64.b64encode(body).decode("ascii")
        write_frame(self._output, request)
        while True:
            message = read_frame(self._input)
            if message is None:
                raise ProtocolError("the BPE closed during a FHIR request")
            if message.get("type") == "fhirResponse" and message.get("id") == request_id:
                break
        if message.get("error"):
            raise Exception("FHIR request %s %s failed: %s" % (method, path, message["error"]))
        body = base64.b64decode(message["body"]) if message.get("body") else b""
        return FhirAnswer(message["status"], dict(message.get("headers", [])), body)


def default_hook(call):
    """What a hook a message send or user task listener did not register does: nothing, but
    a failed send fails the instance, as the Rust API's default does."""
    if call.hook == "onSendError":
        raise Exception("Task %s send failed: %s" % (
            call.send["instantiatesCanonical"], call.send_error["message"]))
    return None


def task_input(task, system, code, value_key="valueString"):
    """The first input of the Task coded system|code, its value_key value."""
    for parameter in task.get("input", []):
        for coding in parameter.get("type", {}).get("coding", []):
            if coding.get("system") == system and coding.get("code") == code:
                if value_key in parameter:
                    return parameter[value_key]
    return None


def parameter(system, code, value_key, value):
    """A Task input or output coded system|code."""
    return {"type": {"coding": [{"system": system, "code": code}]}, value_key: value}


def read(path):
    """A file next to the running script."""
    with open(os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), path),
              encoding="utf-8") as file:
        return file.read()

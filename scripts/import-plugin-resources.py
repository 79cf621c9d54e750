#!/usr/bin/env python3
"""Converts the FHIR resources of real DSF process plugins (Java sources checked out) to the
test fixtures in tests/fixtures/dsf-plugins/, which tests/tests/dsf_resources.rs uploads the
way a BPE does.

For each plugin module directory (the one holding src/main/java and src/main/resources/fhir)
it reads the ProcessPluginDefinition: the version and release date, and which resource files
each process needs (the process id comes from the ActivityDefinition among them). It writes
OUT_DIR/<plugin name>-<version>/plugin.json and the listed resources as JSON under fhir/.
Prose is dropped as for the base definitions (scripts/fhir_xml.py); a Questionnaire item's text
becomes the text the DSF Questionnaire profile fixes for its linkId, or else the linkId itself. Placeholders such as
#{version} stay as they are: the test fills them in as the BPE does.

    scripts/import-plugin-resources.py OUT_DIR [--resources DIR]... PLUGIN_DIR[=VERSION,DATE]...

VERSION and DATE are for plugins that take them from their build (mii-process-feasibility).
A file a plugin lists but does not hold is looked up in the --resources directories (the
src/main/resources of a library the plugin jar bundles, such as mii-processes-common).
"""
import glob
import json
import os
import re
import sys

from fhir_xml import HERE, read_resource

QUESTIONNAIRE_PROFILE = os.path.join(
    HERE, "..", "dsf-fhir", "definitions", "dsf", "StructureDefinition-dsf-questionnaire-2.0.0.json")


def fixed_item_texts():
    """linkId -> the text the DSF Questionnaire profile fixes for that item."""
    elements = json.load(open(QUESTIONNAIRE_PROFILE))["differential"]["element"]
    return {e["id"].split(":")[1].removesuffix(".text"): e["fixedString"] for e in elements
            if e["id"].startswith("Questionnaire.item:") and e["id"].endswith(".text")
            and "fixedString" in e}


def definition_source(plugin_dir):
    found = [p for p in glob.glob(os.path.join(plugin_dir, "src/main/java/**/*ProcessPluginDefinition.java"),
                                  recursive=True)]
    if len(found) != 1:
        raise SystemExit(f"{plugin_dir}: expected one ProcessPluginDefinition, found {found}")
    return open(found[0]).read()


def metadata(source):
    name = (re.search(r'getName\(\)\s*\{\s*return\s*"([^"]+)"', source)
            or re.search(r'\bNAME\s*=\s*"([^"]+)"', source)).group(1)
    version = re.search(r'VERSION\s*=\s*"([^"]+)"', source)
    date = re.search(r"RELEASE_DATE\s*=\s*LocalDate\.of\((\d+),\s*(\d+),\s*(\d+)\)", source)
    return (name, version and version.group(1),
            date and "%04d-%02d-%02d" % tuple(int(d) for d in date.groups()))


def files_by_process(source):
    """The resource paths per process key constant, as getFhirResourcesByProcessId lists them."""
    body = source[source.index("getFhirResourcesByProcessId"):]
    variables = dict(re.findall(r'var\s+(\w+)\s*=\s*"(fhir/[^"]+)"', body))
    lists = re.findall(r"(\"?[\w.]+\"?)\s*,\s*(?://\s*)?(?:List\.of|Arrays\.asList)\(([^)]*)\)", body)
    if not lists:
        raise SystemExit("no getFhirResourcesByProcessId map found")
    return [[variables[v.strip()] for v in re.sub(r"//", "", names).split(",") if v.strip()]
            for _key, names in lists]


def process_id(activity_definition):
    """<domain without dots>_<name> from http://<domain>/bpe/Process/<name>."""
    match = re.match(r"https?://([^/]+)/bpe/Process/([^/|]+)$", activity_definition["url"])
    return f"{match.group(1).replace('.', '')}_{match.group(2)}"


def locate(path, directories):
    for directory in directories:
        candidate = os.path.join(directory, path)
        if os.path.exists(candidate):
            return candidate
    raise SystemExit(f"{path}: not found in {directories}")


def main():
    out_dir = sys.argv[1]
    arguments = sys.argv[2:]
    shared = [arguments[i + 1] for i, a in enumerate(arguments) if a == "--resources"]
    plugins = [a for i, a in enumerate(arguments)
               if a != "--resources" and (i == 0 or arguments[i - 1] != "--resources")]
    item_texts = fixed_item_texts()
    for argument in plugins:
        plugin_dir, _, override = argument.partition("=")
        source = definition_source(plugin_dir)
        name, version, date = metadata(source)
        if override:
            version, date = override.split(",")
        resource_dirs = [os.path.join(plugin_dir, "src/main/resources"), *shared]
        processes = {}
        written = {}
        for paths in files_by_process(source):
            converted = {}
            for path in paths:
                resource = read_resource(locate(path, resource_dirs))
                for item in walk_items(resource.get("item", [])):
                    item["text"] = item_texts.get(item["linkId"], item["linkId"])
                converted[path] = resource
            activities = [r for r in converted.values() if r["resourceType"] == "ActivityDefinition"]
            if len(activities) != 1:
                raise SystemExit(f"{name}: a process lists {len(activities)} ActivityDefinitions")
            processes[process_id(activities[0])] = [p.replace(".xml", ".json") for p in paths]
            written.update(converted)
        plugin_out = os.path.join(out_dir, f"{name}-{version}")
        for path, resource in written.items():
            target = os.path.join(plugin_out, path.replace(".xml", ".json"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                json.dump(resource, f, indent=2)
                f.write("\n")
        with open(os.path.join(plugin_out, "plugin.json"), "w") as f:
            json.dump({"name": name, "version": version, "releaseDate": date,
                       "processes": processes}, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"{name} {version}: {len(written)} resources for {len(processes)} processes")


def walk_items(items):
    for item in items:
        yield item
        yield from walk_items(item.get("item", []))


main()

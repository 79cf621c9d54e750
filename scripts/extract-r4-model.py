#!/usr/bin/env python3
"""Writes dsf-fhir/definitions/r4-model.json: the FHIR R4 (4.0.1) element tree the profile
validator builds snapshots on (names, cardinalities, types, target profiles, content references).

Source: the type summaries in the npm package `fhir` (FHIR.js), `profiles/types.json`, which are
derived from the HL7 R4 core StructureDefinitions. Run:

    npm pack fhir@4.12.0 && tar xzf fhir-4.12.0.tgz
    scripts/extract-r4-model.py package/profiles/types.json > dsf-fhir/definitions/r4-model.json
"""
import json
import sys

# The resource types the DSF FHIR server serves; all data types are kept.
RESOURCES = {
    "Resource", "DomainResource", "ActivityDefinition", "Binary", "Bundle", "CodeSystem",
    "DocumentReference", "Endpoint", "Group", "HealthcareService", "Library", "Location",
    "Measure", "MeasureReport", "NamingSystem", "Organization", "OrganizationAffiliation",
    "Patient", "Practitioner", "PractitionerRole", "Provenance", "Questionnaire",
    "QuestionnaireResponse", "ResearchStudy", "StructureDefinition", "Subscription", "Task",
    "ValueSet",
}


def elements(properties):
    out = []
    choices = {}
    for p in properties:
        name = p["_name"]
        if name.startswith("_"):
            continue  # the primitive extension twin of an element
        element = {"n": name, "min": 1 if p.get("_required") else 0,
                   "max": "*" if p.get("_multiple") else "1"}
        t = p["_type"]
        if p.get("_choice"):
            base = p["_choice"].replace("[x]", "")
            if base not in choices:
                choices[base] = {"n": base + "[x]", "min": element["min"], "max": "1", "t": []}
                out.append(choices[base])
            choices[base]["t"].append(t)
            continue
        if t.startswith("#"):
            element["ref"] = t[1:]
        else:
            element["t"] = [t]
        if p.get("_targetProfiles"):
            element["target"] = p["_targetProfiles"]
        children = p.get("_properties")
        if children and t in ("BackboneElement", "Element"):
            element["e"] = elements(children)
        out.append(element)
    return out


def main():
    types = json.load(open(sys.argv[1]))
    model = {}
    for name, definition in sorted(types.items()):
        kind = definition.get("_kind")
        if kind == "resource" and name not in RESOURCES:
            continue
        model[name] = {"kind": kind, "e": elements(definition.get("_properties", []))}
    json.dump({"fhirVersion": "4.0.1", "types": model}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


main()

#!/usr/bin/env python3
"""Converts the DSF base conformance resources (XML files of the Java DSF's dsf-fhir-validation
module: StructureDefinition, CodeSystem, ValueSet, NamingSystem) to the JSON files in
dsf-fhir/definitions/dsf/, which the FHIR server stores at start-up.

Only the normative content is kept: narratives and explanatory prose (descriptions, short
texts, definitions, comments) are dropped, and a constraint's human text is replaced by its
key and expression. Array-ness and primitive types come from dsf-fhir/definitions/r4-model.json.

    scripts/import-dsf-definitions.py OUT_DIR FILE.xml...
"""
import json
import os
import sys

from fhir_xml import read_resource


def main():
    out_dir = sys.argv[1]
    for path in sys.argv[2:]:
        resource = read_resource(path)
        name = os.path.basename(path).replace(".xml", ".json")
        with open(os.path.join(out_dir, f"{resource['resourceType']}-{name}"), "w") as f:
            json.dump(resource, f, indent=2)
            f.write("\n")


main()

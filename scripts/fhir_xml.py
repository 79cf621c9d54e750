"""Converts FHIR R4 XML to the JSON the FHIR server reads, keeping normative content only.

Narratives and explanatory prose (descriptions, short texts, definitions, comments) are
dropped, and a constraint's human text is replaced by its key and expression. Array-ness and
primitive types come from dsf-fhir/definitions/r4-model.json. Used by the import scripts
beside it.
"""
import json
import os
import xml.etree.ElementTree as ET

NS = "{http://hl7.org/fhir}"
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = json.load(open(os.path.join(HERE, "..", "dsf-fhir", "definitions", "r4-model.json")))["types"]
PROSE = {"text", "description", "purpose", "copyright", "short", "definition", "comment",
         "requirements", "meaningWhenMissing", "orderMeaning", "isModifierReason"}
NUMBERS = {"integer", "positiveInt", "unsignedInt", "decimal"}


def element_defs(type_name):
    return MODEL[type_name]["e"]


def find(defs, name):
    for d in defs:
        if d["n"] == name:
            return d, None
        if d["n"].endswith("[x]"):
            base = d["n"][:-3]
            if name.startswith(base):
                suffix = name[len(base):]
                for t in d["t"]:
                    if t[0].upper() + t[1:] == suffix:
                        return d, t
    return None, None


def children_of(d, owner):
    if "e" in d:
        return d["e"]
    if "ref" in d:
        path = d["ref"].split(".")
        defs = element_defs(path[0])
        for part in path[1:]:
            defs = find(defs, part)[0]["e"]
        return defs
    return element_defs(owner or d["t"][0])


def convert(node, defs):
    out = {}
    for child in node:
        name = child.tag.replace(NS, "")
        if name in PROSE:
            continue
        d, choice_type = find(defs, name)
        if d is None:
            raise SystemExit(f"unknown element {name}")
        type_name = choice_type or (d.get("t") or [None])[0]
        if type_name and MODEL.get(type_name, {}).get("kind") == "primitive-type":
            raw = child.get("value")
            if type_name == "boolean":
                value = raw == "true"
            elif type_name in NUMBERS:
                value = float(raw) if type_name == "decimal" else int(raw)
            else:
                value = raw
            if name == "extension" or value is None:
                continue
        elif name == "extension" or type_name == "Extension":
            value = convert(child, element_defs("Extension"))
            if child.get("url"):
                value = {"url": child.get("url"), **value}
        else:
            value = convert(child, children_of(d, type_name))
        if d["max"] == "*":
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    if "id" in node.attrib and "id" not in out:
        out["id"] = node.get("id")
    return out


def clean_constraints(resource):
    for section in ("differential", "snapshot"):
        for element in resource.get(section, {}).get("element", []):
            for constraint in element.get("constraint", []):
                if "expression" in constraint:
                    constraint["expression"] = " ".join(constraint["expression"].split())
                constraint["human"] = f"{constraint['key']}: {constraint.get('expression', '')}"




def read_resource(path):
    """The resource of an XML file as JSON, prose dropped."""
    try:
        return read_root(ET.parse(path).getroot())
    except SystemExit as e:
        raise SystemExit(f"{path}: {e}")


def read_root(root):
    resource_type = root.tag.replace(NS, "")
    resource = {"resourceType": resource_type, **convert(root, element_defs(resource_type))}
    clean_constraints(resource)
    return resource

//! The FHIR R4 element tree profiles are built on: for every data type and every resource type
//! this server serves, its elements with cardinality, types and nested backbone elements.
//!
//! The tree is data (`definitions/r4-model.json`, made by `scripts/extract-r4-model.py` from
//! the R4 core definitions), read once on first use.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The canonical URL prefix of the R4 core StructureDefinitions.
pub const CORE_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

#[derive(Debug, Deserialize)]
struct ModelFile {
    types: HashMap<String, TypeDef>,
}

/// One data type or resource type.
#[derive(Debug, Deserialize)]
pub struct TypeDef {
    /// `resource`, `complex-type` or `primitive-type`.
    pub kind: String,
    /// Its elements, in order.
    #[serde(rename = "e", default)]
    pub elements: Vec<BaseElement>,
}

/// One element of a type, as the core specification defines it.
#[derive(Debug, Clone, Deserialize)]
pub struct BaseElement {
    /// The JSON name; a choice element ends in `[x]`.
    #[serde(rename = "n")]
    pub name: String,
    /// Least occurrences.
    pub min: u32,
    /// Most occurrences: a number or `*`.
    pub max: String,
    /// Type codes; several only for a choice element.
    #[serde(rename = "t", default)]
    pub types: Vec<String>,
    /// For `Reference` and `canonical`: the target type profiles.
    #[serde(default)]
    pub target: Vec<String>,
    /// Inline children of a backbone element.
    #[serde(rename = "e", default)]
    pub children: Option<Vec<BaseElement>>,
    /// An element defined elsewhere in the same type (`Questionnaire.item.item`).
    #[serde(rename = "ref", default)]
    pub content_reference: Option<String>,
}

impl BaseElement {
    /// Whether it is a choice (`value[x]`).
    pub fn is_choice(&self) -> bool {
        self.name.ends_with("[x]")
    }

    /// The name without `[x]`.
    pub fn stem(&self) -> &str {
        self.name.trim_end_matches("[x]")
    }
}

static MODEL: OnceLock<HashMap<String, TypeDef>> = OnceLock::new();

fn model() -> &'static HashMap<String, TypeDef> {
    MODEL.get_or_init(|| {
        // The file is part of the crate; a broken one is a build defect, caught by the tests.
        serde_json::from_str::<ModelFile>(include_str!("../../definitions/r4-model.json"))
            .map(|file| file.types)
            .unwrap_or_default()
    })
}

/// The definition of a type by name (`Task`, `Coding`, `string`).
pub fn type_def(name: &str) -> Option<&'static TypeDef> {
    model().get(name)
}

/// Whether `name` is a primitive type (`string`, `code`, ...).
pub fn is_primitive(name: &str) -> bool {
    type_def(name).is_some_and(|t| t.kind == "primitive-type")
}

/// The elements below an element whose single type is `type_code`, or below a backbone
/// element (`inline`), or below the element a content reference names.
pub fn children_of(element: &BaseElement, type_code: Option<&str>) -> Vec<BaseElement> {
    if let Some(children) = &element.children {
        return children.clone();
    }
    if let Some(path) = &element.content_reference {
        return element_at(path)
            .map(|e| children_of(&e, None))
            .unwrap_or_default();
    }
    let code = type_code.or_else(|| element.types.first().map(String::as_str));
    match code.and_then(type_def) {
        Some(def) if def.kind != "primitive-type" => def.elements.clone(),
        _ => Vec::new(),
    }
}

/// The element at a dotted path (`Questionnaire.item`).
pub fn element_at(path: &str) -> Option<BaseElement> {
    let mut parts = path.split('.');
    let mut elements = type_def(parts.next()?)?.elements.clone();
    let mut found = None;
    for part in parts {
        let element = elements.iter().find(|e| e.name == part)?.clone();
        elements = children_of(&element, None);
        found = Some(element);
    }
    found
}

/// The JSON key suffix of a type in a choice element: `valueString` for `string`.
pub fn choice_suffix(type_code: &str) -> String {
    let mut chars = type_code.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_has_the_served_types_and_the_data_types() {
        for name in [
            "Task",
            "StructureDefinition",
            "Coding",
            "Extension",
            "string",
            "Meta",
        ] {
            assert!(type_def(name).is_some(), "{name} missing");
        }
        let input = element_at("Task.input").expect("Task.input");
        assert_eq!(input.max, "*");
        let value = children_of(&input, None)
            .into_iter()
            .find(|e| e.name == "value[x]")
            .expect("Task.input.value[x]");
        assert_eq!(value.min, 1);
        assert!(value.types.iter().any(|t| t == "Reference"));
        assert!(element_at("Questionnaire.item.item.linkId").is_some());
        assert!(is_primitive("code") && !is_primitive("Coding"));
    }
}

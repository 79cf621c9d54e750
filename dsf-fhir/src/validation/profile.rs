//! Profiles compiled to element trees: the base type's elements from [`super::model`], with
//! the differentials of every StructureDefinition along `baseDefinition` applied in order.
//! The same tree renders as the snapshot (`$snapshot`) and drives validation.

use super::fhirpath::Expression;
use super::model::{self, BaseElement};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// One allowed type of an element, with the profiles its values must meet.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeRef {
    /// The type code (`string`, `Reference`, `Coding`).
    pub code: String,
    /// Profiles the value must meet.
    pub profiles: Vec<String>,
    /// For references and canonicals: profiles the target must meet.
    pub target_profiles: Vec<String>,
}

/// A FHIRPath invariant on an element.
#[derive(Debug, Clone)]
pub struct Constraint {
    /// The invariant's key (`ele-1`).
    pub key: String,
    /// `error` or `warning`.
    pub severity: String,
    /// The rule in words, for messages.
    pub human: String,
    /// The StructureDefinition that defines it.
    pub source: String,
    /// The FHIRPath expression as written.
    pub expression_text: Option<String>,
    /// `None` when the expression could not be parsed (reported as a warning when used).
    pub expression: Option<Arc<Expression>>,
    /// Why the expression could not be parsed.
    pub parse_error: Option<String>,
}

/// How slices of an element are told apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Discriminator {
    /// `value`, `pattern`, `type`, `profile` or `exists`.
    pub kind: String,
    /// The FHIRPath of the value compared, relative to the element.
    pub path: String,
}

/// An element's slicing.
#[derive(Debug, Clone, PartialEq)]
pub struct Slicing {
    /// How slices are told apart.
    pub discriminators: Vec<Discriminator>,
    /// `closed`, `open` or `openAtEnd`.
    pub rules: String,
    /// Whether the slices must come in their order.
    pub ordered: bool,
}

/// An element's terminology binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// `required`, `extensible`, `preferred` or `example`.
    pub strength: String,
    /// The ValueSet's canonical URL.
    pub value_set: Option<String>,
}

/// One element of a compiled profile.
#[derive(Debug, Clone)]
pub struct Element {
    /// `Task.input:message-name.type`.
    pub id: String,
    /// `Task.input.type`.
    pub path: String,
    /// The JSON name: `input`, `value[x]`.
    pub name: String,
    /// The slice's name, for a slice.
    pub slice_name: Option<String>,
    /// Least occurrences.
    pub min: u32,
    /// `None` for `*`.
    pub max: Option<u32>,
    /// The allowed types.
    pub types: Vec<TypeRef>,
    /// `("Uri", value)` for `fixedUri`.
    pub fixed: Option<(String, Value)>,
    /// `("Coding", value)` for `patternCoding`: what the value must contain.
    pub pattern: Option<(String, Value)>,
    /// The terminology binding.
    pub binding: Option<Binding>,
    /// The FHIRPath invariants.
    pub constraints: Vec<Constraint>,
    /// How the element is sliced, if it is.
    pub slicing: Option<Slicing>,
    /// The slices, in order.
    pub slices: Vec<Element>,
    /// `None` until something below this element is profiled; then the base children.
    pub children: Option<Vec<Element>>,
    /// The base children while `children` is `None`, made on first use: a compiled profile
    /// is validated against many times, and its unprofiled parts are the most of it.
    expanded: Memo<Vec<Element>>,
    /// A choice element narrowed to each of its types, made on first use.
    narrowed: Memo<NarrowedChoices>,
    base: BaseElement,
    /// On the root: differential elements that could not be placed.
    pub notes: Vec<String>,
    /// Elements of the base definition keep their extent; the root has none.
    base_min: u32,
    base_max: String,
}

/// A value derived from an element on first use. A copy starts empty, since a copy is made
/// to be changed (a slice, a derived profile), and what was derived may not hold for it.
#[derive(Debug, Default)]
struct Memo<T>(std::sync::OnceLock<T>);

impl<T> Clone for Memo<T> {
    fn clone(&self) -> Self {
        Memo(std::sync::OnceLock::new())
    }
}

/// A choice element narrowed to one type, by type code.
type NarrowedChoices = std::sync::Mutex<Vec<(String, Arc<Element>)>>;

fn parse_max(max: &str) -> Option<u32> {
    max.parse().ok()
}

fn type_refs(codes: &[String], targets: &[String]) -> Vec<TypeRef> {
    codes
        .iter()
        .map(|code| TypeRef {
            code: code.clone(),
            profiles: Vec::new(),
            target_profiles: if code == "Reference" || code == "canonical" {
                targets.to_vec()
            } else {
                Vec::new()
            },
        })
        .collect()
}

impl Element {
    fn from_base(parent_path: &str, parent_id: &str, base: &BaseElement) -> Self {
        let mut element = Self::unconstrained(
            format!("{parent_id}.{}", base.name),
            format!("{parent_path}.{}", base.name),
            base.clone(),
        );
        element.types = type_refs(&base.types, &base.target);
        element
    }

    /// The root element of a type (`Task`, `Extension`).
    pub fn root(type_name: &str) -> Option<Self> {
        model::type_def(type_name)?;
        let base = BaseElement {
            name: type_name.to_owned(),
            min: 0,
            max: "*".to_owned(),
            types: vec![type_name.to_owned()],
            target: Vec::new(),
            children: None,
            content_reference: None,
        };
        Some(Self::unconstrained(
            type_name.to_owned(),
            type_name.to_owned(),
            base,
        ))
    }

    /// An element as its base defines it, with no type and no profile's rule applied yet.
    fn unconstrained(id: String, path: String, base: BaseElement) -> Self {
        Element {
            id,
            path,
            name: base.name.clone(),
            slice_name: None,
            min: base.min,
            max: parse_max(&base.max),
            types: Vec::new(),
            fixed: None,
            pattern: None,
            binding: None,
            constraints: Vec::new(),
            slicing: None,
            slices: Vec::new(),
            children: None,
            expanded: Memo::default(),
            narrowed: Memo::default(),
            notes: Vec::new(),
            base_min: base.min,
            base_max: base.max.clone(),
            base,
        }
    }

    /// Whether it is a choice (`value[x]`).
    pub fn is_choice(&self) -> bool {
        self.base.is_choice()
    }

    /// The JSON key stem: `value` for `value[x]`.
    pub fn stem(&self) -> &str {
        self.base.stem()
    }

    /// The type the children come from: the only allowed type, if there is one.
    fn single_type(&self) -> Option<&str> {
        match self.types.as_slice() {
            [one] => Some(one.code.as_str()),
            _ => None,
        }
    }

    /// The base children of this element, without profiling.
    pub fn base_children(&self) -> Vec<Element> {
        let type_code = self
            .single_type()
            .or_else(|| self.base.types.first().map(|s| s.as_str()));
        let base = if self.base.children.is_none()
            && self.base.content_reference.is_none()
            && self.path == self.base.name
        {
            // The root: the type's own elements.
            model::type_def(&self.base.name)
                .map(|t| t.elements.clone())
                .unwrap_or_default()
        } else {
            model::children_of(&self.base, type_code)
        };
        base.iter()
            .map(|b| Element::from_base(&self.path, &self.id, b))
            .collect()
    }

    /// The children, expanding from the base first where none are profiled.
    pub fn children_mut(&mut self) -> &mut Vec<Element> {
        self.expanded = Memo::default();
        self.narrowed = Memo::default();
        if self.children.is_none() {
            self.children = Some(self.base_children());
        }
        self.children.get_or_insert_with(Vec::new)
    }

    /// The children as profiled, or the base's.
    pub fn children(&self) -> &[Element] {
        match &self.children {
            Some(children) => children,
            None => self.expanded.0.get_or_init(|| self.base_children()),
        }
    }

    /// A choice element as if `code` were its only type (its children are that type's).
    pub fn narrowed_to(&self, code: &str) -> Arc<Element> {
        let cache = self.narrowed.0.get_or_init(Default::default);
        let mut narrowed = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, element)) = narrowed.iter().find(|(c, _)| c == code) {
            return element.clone();
        }
        let mut single = self.clone();
        single.types.retain(|t| t.code == code);
        single.children = None;
        let single = Arc::new(single);
        narrowed.push((code.to_owned(), single.clone()));
        single
    }

    fn new_slice(&self, slice_name: &str) -> Element {
        let mut slice = self.clone();
        slice.slicing = None;
        slice.slices = Vec::new();
        slice.slice_name = Some(slice_name.to_owned());
        slice.id = format!("{}:{slice_name}", self.id);
        slice.min = 0;
        slice.max = self.max;
        rebase_ids(&mut slice);
        slice
    }

    /// Applies one differential (or snapshot) element's rules to this element.
    fn apply(&mut self, definition: &Value, source: &str) {
        if let Some(min) = definition.get("min").and_then(Value::as_u64) {
            self.min = u32::try_from(min).unwrap_or(u32::MAX);
        }
        if let Some(max) = definition.get("max").and_then(Value::as_str) {
            self.max = parse_max(max);
        }
        if let Some(types) = definition.get("type").and_then(Value::as_array) {
            let strings = |t: &Value, key: &str| -> Vec<String> {
                t.get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            self.types = types
                .iter()
                .filter_map(|t| {
                    Some(TypeRef {
                        code: t.get("code")?.as_str()?.to_owned(),
                        profiles: strings(t, "profile"),
                        target_profiles: strings(t, "targetProfile"),
                    })
                })
                .collect();
        }
        if let Some(object) = definition.as_object() {
            for (key, value) in object {
                if let Some(suffix) = key.strip_prefix("fixed") {
                    self.fixed = Some((suffix.to_owned(), value.clone()));
                } else if let Some(suffix) = key.strip_prefix("pattern") {
                    self.pattern = Some((suffix.to_owned(), value.clone()));
                }
            }
        }
        if let Some(binding) = definition.get("binding") {
            self.binding = Some(Binding {
                strength: binding
                    .get("strength")
                    .and_then(Value::as_str)
                    .unwrap_or("example")
                    .to_owned(),
                value_set: binding
                    .get("valueSet")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
        if let Some(constraints) = definition.get("constraint").and_then(Value::as_array) {
            for constraint in constraints {
                let key = constraint
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if self.constraints.iter().any(|c| c.key == key) {
                    continue;
                }
                let text = constraint
                    .get("expression")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let parsed = text.as_deref().map(Expression::parse);
                self.constraints.push(Constraint {
                    human: constraint
                        .get("human")
                        .and_then(Value::as_str)
                        .unwrap_or(&key)
                        .to_owned(),
                    severity: constraint
                        .get("severity")
                        .and_then(Value::as_str)
                        .unwrap_or("error")
                        .to_owned(),
                    key,
                    source: source.to_owned(),
                    expression: match &parsed {
                        Some(Ok(e)) => Some(Arc::new(e.clone())),
                        _ => None,
                    },
                    parse_error: match parsed {
                        Some(Err(e)) => Some(e.0),
                        _ => None,
                    },
                    expression_text: text,
                });
            }
        }
        if let Some(slicing) = definition.get("slicing") {
            self.slicing = Some(Slicing {
                discriminators: slicing
                    .get("discriminator")
                    .and_then(Value::as_array)
                    .map(|list| {
                        list.iter()
                            .map(|d| Discriminator {
                                kind: d
                                    .get("type")
                                    .and_then(Value::as_str)
                                    .unwrap_or("value")
                                    .to_owned(),
                                path: d
                                    .get("path")
                                    .and_then(Value::as_str)
                                    .unwrap_or("$this")
                                    .to_owned(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                rules: slicing
                    .get("rules")
                    .and_then(Value::as_str)
                    .unwrap_or("open")
                    .to_owned(),
                ordered: slicing
                    .get("ordered")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        }
    }

    /// The snapshot form: this element, its slices and profiled children, in order.
    pub fn snapshot(&self, out: &mut Vec<Value>, expand_all: bool) {
        let mut element = Map::new();
        element.insert("id".into(), json!(self.id));
        element.insert("path".into(), json!(self.path));
        if let Some(slice) = &self.slice_name {
            element.insert("sliceName".into(), json!(slice));
        }
        element.insert("min".into(), json!(self.min));
        element.insert(
            "max".into(),
            json!(self.max.map_or_else(|| "*".to_owned(), |m| m.to_string())),
        );
        element.insert(
            "base".into(),
            json!({"path": self.base_path(), "min": self.base_min, "max": self.base_max}),
        );
        if !self.types.is_empty() {
            let types: Vec<Value> = self
                .types
                .iter()
                .map(|t| {
                    let mut object = Map::new();
                    object.insert("code".into(), json!(t.code));
                    if !t.profiles.is_empty() {
                        object.insert("profile".into(), json!(t.profiles));
                    }
                    if !t.target_profiles.is_empty() {
                        object.insert("targetProfile".into(), json!(t.target_profiles));
                    }
                    Value::Object(object)
                })
                .collect();
            element.insert("type".into(), Value::Array(types));
        }
        if let Some(content_reference) = &self.base.content_reference {
            element.insert(
                "contentReference".into(),
                json!(format!("#{content_reference}")),
            );
        }
        if let Some((suffix, value)) = &self.fixed {
            element.insert(format!("fixed{suffix}"), value.clone());
        }
        if let Some((suffix, value)) = &self.pattern {
            element.insert(format!("pattern{suffix}"), value.clone());
        }
        if !self.constraints.is_empty() {
            let constraints: Vec<Value> = self
                .constraints
                .iter()
                .map(|c| {
                    let mut object = json!({"key": c.key, "severity": c.severity, "human": c.human, "source": c.source});
                    if let Some(text) = &c.expression_text {
                        object["expression"] = json!(text);
                    }
                    object
                })
                .collect();
            element.insert("constraint".into(), Value::Array(constraints));
        }
        if let Some(slicing) = &self.slicing {
            element.insert(
                "slicing".into(),
                json!({
                    "discriminator": slicing.discriminators.iter().map(|d| json!({"type": d.kind, "path": d.path})).collect::<Vec<_>>(),
                    "rules": slicing.rules,
                    "ordered": slicing.ordered,
                }),
            );
        }
        if let Some(binding) = &self.binding {
            let mut object = json!({"strength": binding.strength});
            if let Some(value_set) = &binding.value_set {
                object["valueSet"] = json!(value_set);
            }
            element.insert("binding".into(), object);
        }
        out.push(Value::Object(element));
        let inline = self.base.children.is_some();
        match &self.children {
            Some(children) => children.iter().for_each(|c| c.snapshot(out, false)),
            None if inline || expand_all => self
                .base_children()
                .iter()
                .for_each(|c| c.snapshot(out, false)),
            None => {}
        }
        for slice in &self.slices {
            slice.snapshot(out, false);
        }
    }

    fn base_path(&self) -> String {
        self.path.clone()
    }

    /// The descendant at a dotted path of plain names (`type.coding.system`).
    pub fn descendant(&self, path: &str) -> Option<&Element> {
        let mut current = self;
        if path == "$this" || path.is_empty() {
            return Some(current);
        }
        for part in path.split('.') {
            current = current
                .children()
                .iter()
                .find(|c| c.name == part || (c.is_choice() && c.stem() == part))?;
        }
        Some(current)
    }
}

/// After a slice is cloned from its element, its descendants' ids name the slice.
fn rebase_ids(slice: &mut Element) {
    let prefix = slice.id.clone();
    if let Some(children) = slice.children.as_mut() {
        for child in children {
            child.id = format!("{prefix}.{}", child.name);
            rebase_ids(child);
        }
    }
}

/// Splits an element id into (name, slice) steps: `Task.input:a.type` gives
/// `[("Task", None), ("input", Some("a")), ("type", None)]`. A re-slice (`a/b`) is kept whole.
fn steps(id: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0;
    for c in id.chars() {
        match c {
            '[' => {
                depth += 1;
                current.push(c)
            }
            ']' => {
                depth -= 1;
                current.push(c)
            }
            '.' if depth == 0 => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    out.push(current);
    out.into_iter()
        .map(|step| match step.split_once(':') {
            Some((name, slice)) => (name.to_owned(), Some(slice.to_owned())),
            None => (step, None),
        })
        .collect()
}

/// Where an element goes: the path's names, with slice names taken from the id as far as the
/// id follows the path (some published ids do not), and the element's own `sliceName` last.
fn placement(id: &str, path: Option<&str>, element: &Value) -> Vec<(String, Option<String>)> {
    let id_steps = steps(id);
    let Some(path) = path else {
        return id_steps;
    };
    let mut aligned = true;
    let mut out: Vec<(String, Option<String>)> = path
        .split('.')
        .enumerate()
        .map(|(index, name)| {
            let slice = match id_steps.get(index) {
                Some((id_name, slice)) if aligned && id_name == name => slice
                    .as_deref()
                    .map(|s| s.split(':').next().unwrap_or(s).to_owned()),
                _ => {
                    aligned = false;
                    None
                }
            };
            (name.to_owned(), slice)
        })
        .collect();
    if let (Some(last), Some(slice)) = (
        out.last_mut(),
        element.get("sliceName").and_then(Value::as_str),
    ) {
        last.1 = Some(slice.to_owned());
    }
    out
}

/// Finds a child by id step: `value[x]`, or a type-specific name (`valueString`), which
/// narrows the choice to that type.
fn child_index(children: &mut [Element], name: &str) -> Option<usize> {
    if let Some(index) = children.iter().position(|c| c.name == name) {
        return Some(index);
    }
    let index = children.iter().position(|c| {
        c.is_choice()
            && name.strip_prefix(c.stem()).is_some_and(|suffix| {
                c.types
                    .iter()
                    .any(|t| model::choice_suffix(&t.code) == suffix)
            })
    })?;
    let suffix = name
        .strip_prefix(children[index].stem())
        .unwrap_or("")
        .to_owned();
    let element = &mut children[index];
    element
        .types
        .retain(|t| model::choice_suffix(&t.code) == suffix);
    Some(index)
}

/// Where a differential element could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementError(pub String);

/// Applies a StructureDefinition's differential (or, without one, its snapshot) to `root`.
pub fn apply_definition(root: &mut Element, definition: &Value) -> Result<(), PlacementError> {
    let source = definition
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let elements = definition
        .pointer("/differential/element")
        .or_else(|| definition.pointer("/snapshot/element"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for element in &elements {
        let id = element
            .get("id")
            .or_else(|| element.get("path"))
            .and_then(Value::as_str)
            .ok_or_else(|| PlacementError("an element has neither id nor path".into()))?;
        let steps = placement(id, element.get("path").and_then(Value::as_str), element);
        match locate(root, &steps) {
            Some(target) => target.apply(element, &source),
            // HAPI passes over such elements too; the profile is used without them.
            None => root.notes.push(format!(
                "{source}: element {id} does not exist in the base; ignored"
            )),
        }
    }
    Ok(())
}

fn locate<'a>(
    root: &'a mut Element,
    steps: &[(String, Option<String>)],
) -> Option<&'a mut Element> {
    let ((first, first_slice), rest) = steps.split_first()?;
    if *first != root.path.split('.').next().unwrap_or("") || first_slice.is_some() {
        return None;
    }
    let mut current = root;
    for (name, slice) in rest {
        let children = current.children_mut();
        let index = child_index(children, name)?;
        current = &mut children[index];
        if let Some(slice_name) = slice {
            let position = match current
                .slices
                .iter()
                .position(|s| s.slice_name.as_deref() == Some(slice_name.as_str()))
            {
                Some(position) => position,
                None => {
                    let slice = current.new_slice(slice_name);
                    current.slices.push(slice);
                    current.slices.len() - 1
                }
            };
            current = &mut current.slices[position];
        }
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differentials_land_on_elements_slices_and_choices() {
        let mut root = Element::root("Task").expect("Task");
        let definition = json!({
            "url": "http://example.org/p",
            "differential": {"element": [
                {"id": "Task.intent", "path": "Task.intent", "fixedCode": "order"},
                {"id": "Task.input", "path": "Task.input", "slicing": {"discriminator": [{"type": "value", "path": "type.coding.code"}], "rules": "open"}},
                {"id": "Task.input:a", "path": "Task.input", "sliceName": "a", "min": 1, "max": "1"},
                {"id": "Task.input:a.type.coding.code", "path": "Task.input.type.coding.code", "fixedCode": "a"},
                {"id": "Task.input:a.value[x]", "path": "Task.input.value[x]", "type": [{"code": "string"}]},
                {"id": "Task.input:a.valueString", "path": "Task.input.valueString", "fixedString": "x"}
            ]}
        });
        apply_definition(&mut root, &definition).expect("applies");
        let children = root.children();
        let intent = children
            .iter()
            .find(|c| c.name == "intent")
            .expect("intent");
        assert_eq!(intent.fixed, Some(("Code".into(), json!("order"))));
        let input = children.iter().find(|c| c.name == "input").expect("input");
        assert!(input.slicing.is_some());
        let slice = &input.slices[0];
        assert_eq!((slice.min, slice.max), (1, Some(1)));
        assert_eq!(
            slice
                .descendant("type.coding.code")
                .and_then(|e| e.fixed.clone()),
            Some(("Code".into(), json!("a")))
        );
        let value = slice.descendant("value").expect("value[x]");
        assert_eq!(value.types.len(), 1);
        assert_eq!(value.fixed, Some(("String".into(), json!("x"))));
        let mut snapshot = Vec::new();
        root.snapshot(&mut snapshot, true);
        assert!(snapshot
            .iter()
            .any(|e| e["id"] == "Task.input:a.type.coding.code"));
        assert!(snapshot.iter().any(|e| e["id"] == "Task.status"));
        let bad = json!({"differential": {"element": [{"id": "Task.nothing"}]}});
        apply_definition(&mut root, &bad).expect("an unknown element is noted, not fatal");
        assert_eq!(root.notes.len(), 1);
        let nameless = json!({"differential": {"element": [{"min": 1}]}});
        assert!(apply_definition(&mut root, &nameless).is_err());
    }
}

//! Checks one resource against its type and the profiles in its `meta.profile`: cardinality,
//! choice types, fixed and pattern values, slices, required bindings, the profiles of
//! extensions and typed values, and FHIRPath invariants.

use super::model::{self, CORE_PREFIX};
use super::profile::{Discriminator, Element, TypeRef};
use super::registry::Definitions;
use serde_json::Value;
use std::fmt;

/// Nesting deeper than this is not followed (a resource is bounded much earlier by
/// `crate::bounds`; profiles referring to each other are bounded here).
const MAX_DEPTH: usize = 48;

/// The slice that takes what no other slice of a closed slicing matches.
const DEFAULT_SLICE: &str = "@default";

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// A note.
    Information,
    /// Allowed, but worth a look.
    Warning,
    /// The resource is not valid.
    Error,
}

impl Severity {
    /// The OperationOutcome severity code.
    pub fn code(self) -> &'static str {
        match self {
            Severity::Information => "information",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One finding: where (a FHIRPath location such as `Task.input[1].type`) and what rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// How serious.
    pub severity: Severity,
    /// Where, as a FHIRPath location.
    pub location: String,
    /// What rule is broken.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// The findings of one validation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// All findings.
    pub issues: Vec<Issue>,
}

impl Report {
    /// The findings of severity error.
    pub fn errors(&self) -> impl Iterator<Item = &Issue> {
        self.issues.iter().filter(|i| i.severity == Severity::Error)
    }

    /// Whether there is no error.
    pub fn is_valid(&self) -> bool {
        self.errors().next().is_none()
    }

    fn push(&mut self, severity: Severity, location: &Location<'_>, message: impl Into<String>) {
        self.issues.push(Issue {
            severity,
            location: location.to_string(),
            message: message.into(),
        });
    }
}

/// Validates `resource` against its base type and each profile it claims.
pub fn validate(definitions: &Definitions, resource: &Value) -> Report {
    let mut report = Report::default();
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        report.push(Severity::Error, &Location::Root(""), "resourceType missing");
        return report;
    };
    let profiles: Vec<String> = resource
        .pointer("/meta/profile")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let mut walker = Walker {
        definitions,
        resource,
        report: &mut report,
    };
    let root = Location::Root(resource_type);
    let core = format!("{CORE_PREFIX}{resource_type}");
    match definitions.profile(&core) {
        Ok(profile_root) => walker.element(&profile_root, resource, &root, 0),
        Err(e) => walker.report.push(Severity::Error, &root, e),
    }
    for profile in &profiles {
        if !definitions.is_known_profile(profile) {
            walker.report.push(
                Severity::Warning,
                &root,
                format!("profile {profile} is not known to this server; not checked"),
            );
            continue;
        }
        match definitions.profile(profile) {
            Ok(profile_root) => {
                for note in &profile_root.notes {
                    walker.report.push(Severity::Warning, &root, note.clone());
                }
                if profile_root.path != resource_type {
                    walker.report.push(
                        Severity::Error,
                        &root,
                        format!(
                            "profile {profile} is for {}, not {resource_type}",
                            profile_root.path
                        ),
                    );
                    continue;
                }
                walker.element(&profile_root, resource, &root, 0)
            }
            Err(e) => walker.report.push(
                Severity::Error,
                &root,
                format!("profile {profile} cannot be used: {e}"),
            ),
        }
    }
    dedup(&mut report.issues);
    report
}

fn dedup(issues: &mut Vec<Issue>) {
    let mut seen = std::collections::HashSet::new();
    issues.retain(|i| seen.insert((i.severity, i.location.clone(), i.message.clone())));
}

/// Where the walk is, as a FHIRPath-like location (`Task.input[1].type`). It is formatted
/// only when an issue is reported there: most elements walked report nothing.
#[derive(Clone, Copy)]
enum Location<'a> {
    Root(&'a str),
    /// `parent.name`
    Child(&'a Location<'a>, &'a str),
    /// `parent[index]`
    Index(&'a Location<'a>, usize),
    /// `parent:slice`
    Slice(&'a Location<'a>, &'a str),
}

impl std::fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Root(name) => f.write_str(name),
            Location::Child(parent, name) => write!(f, "{parent}.{name}"),
            Location::Index(parent, index) => write!(f, "{parent}[{index}]"),
            Location::Slice(parent, name) => write!(f, "{parent}:{name}"),
        }
    }
}

struct Walker<'a, 'r> {
    definitions: &'a Definitions,
    resource: &'a Value,
    report: &'r mut Report,
}

/// An instance value with the type it was found as (for choice elements).
struct Item<'v> {
    value: &'v Value,
    type_code: Option<String>,
}

impl Walker<'_, '_> {
    fn element(&mut self, element: &Element, value: &Value, location: &Location<'_>, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        self.rules(element, value, None, location, depth);
        if value.is_object() {
            self.children(element, value, location, depth);
        }
    }

    /// The rules of `element` that apply to the value itself.
    fn rules(
        &mut self,
        element: &Element,
        value: &Value,
        type_code: Option<&str>,
        location: &Location<'_>,
        depth: usize,
    ) {
        self.constraints(element, value, location);
        self.value_rules(element, value, type_code, location, depth);
    }

    /// The element's invariants (FHIRPath constraints), evaluated on the value.
    fn constraints(&mut self, element: &Element, value: &Value, location: &Location<'_>) {
        for constraint in &element.constraints {
            let failing = match &constraint.expression {
                Some(expression) => match expression.is_true(value, self.resource) {
                    Ok(Some(false)) => true,
                    Ok(_) => false,
                    Err(e) => {
                        self.report.push(
                            Severity::Warning,
                            location,
                            format!("constraint {} not evaluated: {e}", constraint.key),
                        );
                        false
                    }
                },
                None => {
                    if let Some(error) = &constraint.parse_error {
                        self.report.push(
                            Severity::Warning,
                            location,
                            format!("constraint {} not evaluated: {error}", constraint.key),
                        );
                    }
                    false
                }
            };
            if failing {
                let severity = if constraint.severity == "error" {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                self.report.push(
                    severity,
                    location,
                    format!("constraint {} failed: {}", constraint.key, constraint.human),
                );
            }
        }
    }

    /// Fixed and pattern values, the required binding, and the type's rules.
    fn value_rules(
        &mut self,
        element: &Element,
        value: &Value,
        type_code: Option<&str>,
        location: &Location<'_>,
        depth: usize,
    ) {
        if let Some((_, fixed)) = &element.fixed {
            if !same(value, fixed) {
                self.report.push(
                    Severity::Error,
                    location,
                    format!("value {} must be exactly {fixed}", brief(value)),
                );
            }
        }
        if let Some((_, pattern)) = &element.pattern {
            if !contains(value, pattern) {
                self.report.push(
                    Severity::Error,
                    location,
                    format!("value {} must match the pattern {pattern}", brief(value)),
                );
            }
        }
        if let Some(binding) = &element.binding {
            if binding.strength == "required" {
                if let Some(value_set) = &binding.value_set {
                    self.binding(value_set, value, location);
                }
            }
        }
        let type_ref = match type_code {
            Some(code) => element.types.iter().find(|t| t.code == code),
            None => match element.types.as_slice() {
                [one] => Some(one),
                _ => None,
            },
        };
        if let Some(type_ref) = type_ref {
            if type_ref.code == "Coding" {
                self.code_system(value, location);
            }
            self.type_profiles(type_ref, value, location, depth);
        }
    }

    /// A coding from a code system stored here must use one of its codes, bound or not.
    fn code_system(&mut self, value: &Value, location: &Location<'_>) {
        let (Some(system), Some(code)) = (
            value.get("system").and_then(Value::as_str),
            value.get("code").and_then(Value::as_str),
        ) else {
            return;
        };
        if let Some(codes) = self.definitions.code_system_codes(system) {
            if !codes.contains(code) {
                self.report.push(
                    Severity::Error,
                    location,
                    format!("code '{code}' is not defined in the code system {system}"),
                );
            }
        }
    }

    /// Validates against the profiles of the value's type; with several, one must hold.
    fn type_profiles(
        &mut self,
        type_ref: &TypeRef,
        value: &Value,
        location: &Location<'_>,
        depth: usize,
    ) {
        if type_ref.profiles.is_empty() {
            return;
        }
        let mut best: Option<Report> = None;
        for profile in &type_ref.profiles {
            let Ok(root) = self.definitions.profile(profile) else {
                self.report.push(
                    Severity::Warning,
                    location,
                    format!("profile {profile} is not known to this server; not checked"),
                );
                return;
            };
            let mut report = Report::default();
            let mut nested = Walker {
                definitions: self.definitions,
                resource: self.resource,
                report: &mut report,
            };
            nested.element(&root, value, location, depth + 1);
            if report.is_valid() {
                self.report.issues.extend(report.issues);
                return;
            }
            if best
                .as_ref()
                .is_none_or(|b| b.errors().count() > report.errors().count())
            {
                best = Some(report);
            }
        }
        if let Some(best) = best {
            if type_ref.profiles.len() > 1 {
                self.report.push(
                    Severity::Error,
                    location,
                    format!(
                        "matches none of the profiles {}",
                        type_ref.profiles.join(", ")
                    ),
                );
            }
            self.report.issues.extend(best.issues);
        }
    }

    fn binding(&mut self, value_set: &str, value: &Value, location: &Location<'_>) {
        let Some(expansion) = self.definitions.expansion(value_set) else {
            self.report.push(
                Severity::Warning,
                location,
                format!("value set {value_set} is not known to this server; codes not checked"),
            );
            return;
        };
        let codings: Vec<(Option<&str>, &str)> = match value {
            Value::String(code) => vec![(None, code.as_str())],
            Value::Object(object) => {
                fn coding(c: &Value) -> Option<(Option<&str>, &str)> {
                    Some((
                        c.get("system").and_then(Value::as_str),
                        c.get("code")?.as_str()?,
                    ))
                }
                match object.get("coding").and_then(Value::as_array) {
                    Some(codings) => codings.iter().filter_map(coding).collect(),
                    None => coding(value).into_iter().collect(),
                }
            }
            _ => Vec::new(),
        };
        if codings.is_empty() {
            if value.get("text").is_none() || value.get("coding").is_some() {
                self.report.push(
                    Severity::Error,
                    location,
                    format!("a code from the required value set {value_set} is needed"),
                );
            }
            return;
        }
        if !codings
            .iter()
            .any(|(system, code)| expansion.contains(*system, code))
        {
            let shown: Vec<String> = codings
                .iter()
                .map(|(s, c)| format!("{}#{c}", s.unwrap_or("")))
                .collect();
            self.report.push(
                Severity::Error,
                location,
                format!(
                    "code {} is not in the required value set {value_set}",
                    shown.join(", ")
                ),
            );
        }
    }

    fn children(
        &mut self,
        element: &Element,
        value: &Value,
        location: &Location<'_>,
        depth: usize,
    ) {
        for child in element.children() {
            let items = self.items(child, value, location);
            // Absent and not required, by the element or by one of its slices: nothing to
            // check (and most elements of a resource are absent).
            if items.is_empty() && child.min == 0 && child.slices.iter().all(|s| s.min == 0) {
                continue;
            }
            let here = Location::Child(location, child.stem());
            let slicing = child.slicing.is_some() || !child.slices.is_empty();
            let count = items.len() as u64;
            if count < u64::from(child.min) {
                self.report.push(
                    Severity::Error,
                    &here,
                    format!("minimum cardinality {} not met (found {count})", child.min),
                );
            }
            if let Some(max) = child.max {
                if count > u64::from(max) {
                    self.report.push(
                        Severity::Error,
                        &here,
                        format!("maximum cardinality {max} exceeded (found {count})"),
                    );
                }
            }
            if slicing {
                self.slices(child, &items, &here, depth);
                continue;
            }
            let many = child.max != Some(1) || items.len() > 1;
            for (index, item) in items.iter().enumerate() {
                let at = if many {
                    Location::Index(&here, index)
                } else {
                    here
                };
                self.item(child, item, &at, depth);
                if child.name == "extension" || child.name == "modifierExtension" {
                    self.unsliced_extension(item.value, &at, depth);
                }
            }
        }
    }

    fn item(&mut self, element: &Element, item: &Item<'_>, location: &Location<'_>, depth: usize) {
        self.rules(
            element,
            item.value,
            item.type_code.as_deref(),
            location,
            depth,
        );
        if item.value.is_object() {
            match (&item.type_code, element.is_choice()) {
                (Some(code), true) if element.types.len() > 1 => {
                    let narrowed = element.narrowed_to(code);
                    self.children(&narrowed, item.value, location, depth + 1);
                }
                _ => self.children(element, item.value, location, depth + 1),
            }
        }
    }

    /// An extension no slice claims is checked against its definition, if this server has it.
    fn unsliced_extension(&mut self, value: &Value, location: &Location<'_>, depth: usize) {
        let Some(url) = value.get("url").and_then(Value::as_str) else {
            return;
        };
        if self.definitions.find("StructureDefinition", url).is_none() {
            return;
        }
        if let Ok(root) = self.definitions.profile(url) {
            if root.path == "Extension" {
                self.element(&root, value, location, depth + 1);
            }
        }
    }

    fn items<'v>(
        &mut self,
        element: &Element,
        value: &'v Value,
        location: &Location<'_>,
    ) -> Vec<Item<'v>> {
        let Some(object) = value.as_object() else {
            return Vec::new();
        };
        let mut items = Vec::new();
        if element.is_choice() {
            let stem = element.stem();
            for (key, found) in object {
                let Some(suffix) = key.strip_prefix(stem) else {
                    continue;
                };
                if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                    continue;
                }
                let type_code = if element
                    .types
                    .iter()
                    .any(|t| model::choice_suffix(&t.code) == suffix)
                {
                    element
                        .types
                        .iter()
                        .find(|t| model::choice_suffix(&t.code) == suffix)
                        .map(|t| t.code.clone())
                } else {
                    self.report.push(
                        Severity::Error,
                        &Location::Child(location, key),
                        format!(
                            "type {suffix} is not allowed here (allowed: {})",
                            element
                                .types
                                .iter()
                                .map(|t| t.code.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    None
                };
                items.push(Item {
                    value: found,
                    type_code,
                });
            }
            return items;
        }
        match object.get(&element.name) {
            Some(Value::Array(values)) => items.extend(values.iter().map(|v| Item {
                value: v,
                type_code: None,
            })),
            Some(v) => items.push(Item {
                value: v,
                type_code: None,
            }),
            None => {
                // A primitive given only by its extensions (`_name`) is present all the same.
                let primitive = element
                    .types
                    .iter()
                    .any(|t| t.code.starts_with(|c: char| c.is_ascii_lowercase()));
                let twin = primitive
                    .then(|| {
                        object
                            .iter()
                            .find(|(key, _)| key.strip_prefix('_') == Some(element.name.as_str()))
                    })
                    .flatten();
                if let Some((_, twin)) = twin {
                    let n = twin.as_array().map_or(1, Vec::len);
                    items.extend((0..n).map(|_| Item {
                        value: &Value::Null,
                        type_code: None,
                    }));
                }
            }
        }
        items
    }

    fn slices(
        &mut self,
        element: &Element,
        items: &[Item<'_>],
        location: &Location<'_>,
        depth: usize,
    ) {
        let mut discriminators = element
            .slicing
            .as_ref()
            .map(|s| s.discriminators.clone())
            .unwrap_or_default();
        if discriminators.is_empty()
            && (element.name == "extension" || element.name == "modifierExtension")
        {
            // Extensions are sliced by url unless the profile says otherwise.
            discriminators.push(Discriminator {
                kind: "value".to_owned(),
                path: "url".to_owned(),
            });
        }
        let mut counts = vec![0u32; element.slices.len()];
        for (index, item) in items.iter().enumerate() {
            let at = Location::Index(location, index);
            let matched = element
                .slices
                .iter()
                .position(|slice| {
                    slice.slice_name.as_deref() != Some(DEFAULT_SLICE)
                        && self.matches(slice, &discriminators, item.value, depth)
                })
                .or_else(|| {
                    element
                        .slices
                        .iter()
                        .position(|slice| slice.slice_name.as_deref() == Some(DEFAULT_SLICE))
                });
            match matched {
                Some(s) => {
                    counts[s] += 1;
                    self.item(&element.slices[s], item, &at, depth);
                    self.element_rules_beside_slice(element, item, &at);
                }
                None => {
                    if element
                        .slicing
                        .as_ref()
                        .is_some_and(|s| s.rules == "closed")
                    {
                        self.report.push(
                            Severity::Error,
                            &at,
                            "matches no slice, and the slicing is closed",
                        );
                    }
                    self.item(element, item, &at, depth);
                    if element.name == "extension" || element.name == "modifierExtension" {
                        self.unsliced_extension(item.value, &at, depth);
                    }
                }
            }
        }
        for (slice, count) in element.slices.iter().zip(counts) {
            let name = slice.slice_name.as_deref().unwrap_or("");
            if count < slice.min {
                self.report.push(
                    Severity::Error,
                    &Location::Slice(location, name),
                    format!(
                        "slice {name}: minimum cardinality {} not met (found {count})",
                        slice.min
                    ),
                );
            }
            if let Some(max) = slice.max {
                if count > max {
                    self.report.push(
                        Severity::Error,
                        &Location::Slice(location, name),
                        format!("slice {name}: maximum cardinality {max} exceeded (found {count})"),
                    );
                }
            }
        }
    }

    /// Invariants on the sliced element hold for every item, sliced or not.
    fn element_rules_beside_slice(
        &mut self,
        element: &Element,
        item: &Item<'_>,
        location: &Location<'_>,
    ) {
        self.constraints(element, item.value, location);
    }

    fn matches(
        &self,
        slice: &Element,
        discriminators: &[Discriminator],
        value: &Value,
        depth: usize,
    ) -> bool {
        if discriminators.is_empty() {
            return false;
        }
        discriminators.iter().all(|d| match d.kind.as_str() {
            // A primitive's `value` is the primitive itself.
            "value" | "pattern" | "fixed" if d.path == "value" && !value.is_object() => self
                .expected_value(slice, "$this")
                .is_none_or(|expected| contains(value, &expected)),
            "value" | "pattern" | "fixed" => {
                // A slice that fixes nothing at the path does not narrow by it (as HAPI).
                let Some(expected) = self.expected_value(slice, &d.path) else {
                    return true;
                };
                navigate(value, &d.path)
                    .iter()
                    .any(|actual| contains(actual, &expected))
            }
            "exists" => {
                let present = !navigate(value, &d.path).is_empty();
                match slice.descendant(&d.path) {
                    Some(e) if e.max == Some(0) => !present,
                    Some(e) if e.min > 0 => present,
                    _ => false,
                }
            }
            "profile" => {
                let profiles: Vec<String> = slice
                    .descendant(&d.path)
                    .map(|e| e.types.iter().flat_map(|t| t.profiles.clone()).collect())
                    .unwrap_or_default();
                profiles.iter().any(|profile| {
                    let Ok(root) = self.definitions.profile(profile) else {
                        return false;
                    };
                    let mut report = Report::default();
                    let mut nested = Walker {
                        definitions: self.definitions,
                        resource: self.resource,
                        report: &mut report,
                    };
                    let targets = navigate(value, &d.path);
                    for target in &targets {
                        nested.element(&root, target, &Location::Root(""), depth + 1);
                    }
                    !targets.is_empty() && report.is_valid()
                })
            }
            _ => false,
        })
    }

    /// What a slice fixes at a discriminator path: a fixed or pattern value, or for the
    /// `url` of an extension slice, the URL of the extension's profile, or else the slice's
    /// name (the convention of complex extensions, whose parts are named by their url; some
    /// plugins' profiles leave the part's `url` unfixed).
    fn expected_value(&self, slice: &Element, path: &str) -> Option<Value> {
        let target = slice.descendant(path)?;
        if let Some((_, fixed)) = target.fixed.as_ref().or(target.pattern.as_ref()) {
            return Some(fixed.clone());
        }
        if path == "url" {
            let extension = slice.types.iter().find(|t| t.code == "Extension")?;
            let url = match extension.profiles.first() {
                Some(profile) => profile.split('|').next().unwrap_or(profile),
                None => slice.slice_name.as_deref()?,
            };
            return Some(Value::String(url.to_owned()));
        }
        None
    }
}

/// The values at a dotted path of plain names below `value` (choice stems included).
fn navigate<'v>(value: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut current = vec![value];
    if path == "$this" || path.is_empty() {
        return current;
    }
    for part in path.split('.') {
        let mut next = Vec::new();
        for item in current {
            if let Some(object) = item.as_object() {
                super::fhirpath::object_children(object, part, &mut next);
            }
        }
        current = next;
    }
    current
}

/// Fixed-value equality: exactly the same content (object key order aside).
fn same(value: &Value, fixed: &Value) -> bool {
    match (value, fixed) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => value == fixed,
    }
}

/// Pattern matching: every part of the pattern is in the value; arrays match when each
/// pattern item is matched by some value item.
fn contains(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(key, pv)| v.get(key).is_some_and(|vv| contains(vv, pv))),
        (Value::Array(v), Value::Array(p)) => {
            p.iter().all(|pv| v.iter().any(|vv| contains(vv, pv)))
        }
        (Value::Array(v), p) => v.iter().any(|vv| contains(vv, p)),
        _ => same(value, pattern),
    }
}

fn brief(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}...", &text[..cut])
    } else {
        text
    }
}

//! The conformance resources validation reads: StructureDefinitions, ValueSets and
//! CodeSystems by canonical URL, with profiles compiled and value sets expanded on first use.

use super::model::CORE_PREFIX;
use super::profile::{apply_definition, Element};
pub use crate::resource_type::CONFORMANCE_TYPES;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// DSF 1.x plugins derive their Task profiles from `task-base`; DSF 2 calls it `task` (the
/// Java DSF migrates stored profiles so).
const ALIASES: [(&str, &str); 1] = [(
    "http://dsf.dev/fhir/StructureDefinition/task-base",
    "http://dsf.dev/fhir/StructureDefinition/task",
)];

/// Longest `baseDefinition` chain followed; longer ones are taken as circular.
const MAX_CHAIN: usize = 16;

/// The codes of an expanded value set.
#[derive(Debug, Default)]
pub struct Expansion {
    /// The `(system, code)` pairs.
    pub codes: HashSet<(String, String)>,
}

impl Expansion {
    /// Whether `code` is in the expansion; without a `system`, a code of any system.
    pub fn contains(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            // A system written as `url|version` is the code system of that url.
            Some(system) => {
                let url = system.split('|').next().unwrap_or(system);
                self.codes.contains(&(url.to_owned(), code.to_owned()))
            }
            None => self.codes.iter().any(|(_, c)| c == code),
        }
    }
}

/// One generation of the server's conformance resources.
#[derive(Default)]
pub struct Definitions {
    by_type: HashMap<&'static str, HashMap<String, Vec<Arc<Value>>>>,
    compiled: Mutex<HashMap<String, Result<Arc<Element>, String>>>,
    expansions: Mutex<HashMap<String, Option<Arc<Expansion>>>>,
    code_systems: Mutex<HashMap<String, Option<Arc<HashSet<String>>>>>,
}

fn canonical_parts(canonical: &str) -> (&str, Option<&str>) {
    match canonical.split_once('|') {
        Some((url, version)) => (url, Some(version)),
        None => (canonical, None),
    }
}

/// The value `cache` holds for `key`, computed and kept when missing. The lock is not held
/// while computing: a computation may look up other entries of the same cache.
fn cached<T: Clone>(
    cache: &Mutex<HashMap<String, T>>,
    key: &str,
    compute: impl FnOnce() -> T,
) -> T {
    if let Some(done) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
        return done.clone();
    }
    let value = compute();
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.to_owned(), value.clone());
    value
}

/// Orders versions numerically where they are numbers (`1.10` after `1.9`).
fn version_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(['.', '-'])
        .map(|part| (part.parse().unwrap_or(0), part.to_owned()))
        .collect()
}

impl Definitions {
    /// From resources of the [`CONFORMANCE_TYPES`]; others are ignored.
    pub fn new(resources: impl IntoIterator<Item = Value>) -> Self {
        let mut by_type: HashMap<&'static str, HashMap<String, Vec<Arc<Value>>>> = HashMap::new();
        for resource in resources {
            let Some(kind) = resource
                .get("resourceType")
                .and_then(Value::as_str)
                .and_then(|t| CONFORMANCE_TYPES.iter().find(|c| **c == t))
            else {
                continue;
            };
            let Some(url) = resource.get("url").and_then(Value::as_str) else {
                continue;
            };
            by_type
                .entry(kind)
                .or_default()
                .entry(url.to_owned())
                .or_default()
                .push(Arc::new(resource));
        }
        for versions in by_type.values_mut().flat_map(HashMap::values_mut) {
            versions.sort_by_key(|r| {
                version_key(r.get("version").and_then(Value::as_str).unwrap_or(""))
            });
        }
        Definitions {
            by_type,
            ..Definitions::default()
        }
    }

    /// The resource of `kind` a canonical names: that version, or the latest without one.
    pub fn find(&self, kind: &str, canonical: &str) -> Option<Arc<Value>> {
        let (url, version) = canonical_parts(canonical);
        // An alias names the current profile, whatever version it was written with.
        let (url, version) = match ALIASES.iter().find(|(alias, _)| *alias == url) {
            Some((_, target)) => (*target, None),
            None => (url, version),
        };
        let versions = self.by_type.get(kind)?.get(url)?;
        match version {
            Some(version) => versions
                .iter()
                .find(|r| r.get("version").and_then(Value::as_str) == Some(version))
                .cloned(),
            None => versions.last().cloned(),
        }
    }

    /// For bindings: that version if stored, else the latest (the Java DSF drops the
    /// versions of DSF value sets from bindings of migrated profiles).
    fn find_lenient(&self, kind: &str, canonical: &str) -> Option<Arc<Value>> {
        self.find(kind, canonical)
            .or_else(|| self.find(kind, canonical_parts(canonical).0))
    }

    /// Whether `canonical` is a core profile or a StructureDefinition the registry holds.
    pub fn is_known_profile(&self, canonical: &str) -> bool {
        canonical.starts_with(CORE_PREFIX) || self.find("StructureDefinition", canonical).is_some()
    }

    /// The element tree of a profile (or of a core type, by its core URL).
    pub fn profile(&self, canonical: &str) -> Result<Arc<Element>, String> {
        self.compile_cached(canonical, 0)
    }

    fn compile_cached(&self, canonical: &str, depth: usize) -> Result<Arc<Element>, String> {
        cached(&self.compiled, canonical, || {
            self.compile(canonical, depth).map(Arc::new)
        })
    }

    /// The element tree of a StructureDefinition given whole (for `$snapshot` of one not
    /// stored).
    pub fn profile_of(&self, definition: &Value) -> Result<Element, String> {
        self.build(definition, 0)
    }

    fn compile(&self, canonical: &str, depth: usize) -> Result<Element, String> {
        if let Some(type_name) = canonical.strip_prefix(CORE_PREFIX) {
            let type_name = canonical_parts(type_name).0;
            return Element::root(type_name)
                .ok_or_else(|| format!("{canonical} is not a type this server knows"));
        }
        let definition = self
            .find("StructureDefinition", canonical)
            .ok_or_else(|| format!("profile {canonical} is not known to this server"))?;
        self.build(&definition, depth)
    }

    fn build(&self, definition: &Value, depth: usize) -> Result<Element, String> {
        if depth > MAX_CHAIN {
            return Err("the baseDefinition chain is too long or circular".into());
        }
        let mut root = match definition.get("baseDefinition").and_then(Value::as_str) {
            Some(base) => (*self.compile_cached(base, depth + 1)?).clone(),
            None => {
                let type_name = definition
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or("a StructureDefinition without type or baseDefinition")?;
                Element::root(type_name)
                    .ok_or_else(|| format!("type {type_name} is not known to this server"))?
            }
        };
        apply_definition(&mut root, definition).map_err(|e| {
            format!(
                "{}: {}",
                definition
                    .get("url")
                    .and_then(Value::as_str)
                    .unwrap_or("profile"),
                e.0
            )
        })?;
        Ok(root)
    }

    /// The codes of a complete code system stored here (`system` may carry `|version`).
    pub fn code_system_codes(&self, system: &str) -> Option<Arc<HashSet<String>>> {
        cached(&self.code_systems, system, || {
            self.find_lenient("CodeSystem", system)
                .filter(|cs| {
                    cs.get("content")
                        .and_then(Value::as_str)
                        .is_none_or(|content| content == "complete")
                })
                .map(|cs| {
                    let mut codes = HashSet::new();
                    collect_concepts(cs.get("concept").and_then(Value::as_array), &mut codes, 0);
                    Arc::new(codes)
                })
        })
    }

    /// The codes of a value set; `None` when it, or a code system it includes whole, is
    /// not stored here (its codes cannot be checked).
    pub fn expansion(&self, canonical: &str) -> Option<Arc<Expansion>> {
        cached(&self.expansions, canonical, || {
            self.expand(canonical, 0).map(Arc::new)
        })
    }

    fn expand(&self, canonical: &str, depth: usize) -> Option<Expansion> {
        if depth > MAX_CHAIN {
            return None;
        }
        let value_set = self.find_lenient("ValueSet", canonical)?;
        let mut expansion = Expansion::default();
        if let Some(contains) = value_set
            .pointer("/expansion/contains")
            .and_then(Value::as_array)
        {
            collect_contains(contains, &mut expansion.codes);
            return Some(expansion);
        }
        let compose = value_set.get("compose")?;
        for include in compose.get("include").and_then(Value::as_array)? {
            if include.get("filter").is_some() {
                return None;
            }
            for nested in include
                .get("valueSet")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                expansion
                    .codes
                    .extend(self.expand(nested, depth + 1)?.codes.iter().cloned());
            }
            let Some(system) = include.get("system").and_then(Value::as_str) else {
                continue;
            };
            match include.get("concept").and_then(Value::as_array) {
                Some(concepts) => {
                    for code in concepts.iter().filter_map(|c| c.get("code")?.as_str()) {
                        expansion.codes.insert((system.to_owned(), code.to_owned()));
                    }
                }
                None => {
                    let canonical = match include.get("version").and_then(Value::as_str) {
                        Some(version) => format!("{system}|{version}"),
                        None => system.to_owned(),
                    };
                    let code_system = self.find_lenient("CodeSystem", &canonical)?;
                    let mut codes = HashSet::new();
                    collect_concepts(
                        code_system.get("concept").and_then(Value::as_array),
                        &mut codes,
                        0,
                    );
                    expansion
                        .codes
                        .extend(codes.into_iter().map(|c| (system.to_owned(), c)));
                }
            }
        }
        for exclude in compose
            .get("exclude")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let system = exclude.get("system").and_then(Value::as_str).unwrap_or("");
            for code in exclude
                .get("concept")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("code")?.as_str())
            {
                expansion
                    .codes
                    .remove(&(system.to_owned(), code.to_owned()));
            }
        }
        Some(expansion)
    }
}

fn collect_contains(contains: &[Value], codes: &mut HashSet<(String, String)>) {
    for entry in contains {
        if let (Some(system), Some(code)) = (
            entry.get("system").and_then(Value::as_str),
            entry.get("code").and_then(Value::as_str),
        ) {
            codes.insert((system.to_owned(), code.to_owned()));
        }
        if let Some(nested) = entry.get("contains").and_then(Value::as_array) {
            collect_contains(nested, codes);
        }
    }
}

fn collect_concepts(concepts: Option<&Vec<Value>>, codes: &mut HashSet<String>, depth: usize) {
    if depth > 32 {
        return;
    }
    for concept in concepts.into_iter().flatten() {
        if let Some(code) = concept.get("code").and_then(Value::as_str) {
            codes.insert(code.to_owned());
        }
        collect_concepts(
            concept.get("concept").and_then(Value::as_array),
            codes,
            depth + 1,
        );
    }
}

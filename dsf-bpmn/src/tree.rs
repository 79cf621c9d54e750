//! A namespace-resolved element tree of the XML, without diagram content.

use crate::{Error, Result};
use xml::common::Position;
use xml::reader::{EventReader, ParserConfig, XmlEvent};

pub const BPMN: &str = "http://www.omg.org/spec/BPMN/20100524/MODEL";
pub const CAMUNDA: &str = "http://camunda.org/schema/1.0/bpmn";
pub const BPMNDI: &str = "http://www.omg.org/spec/BPMN/20100524/DI";
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

#[derive(Debug, Default)]
pub struct Element {
    pub namespace: Option<String>,
    pub name: String,
    /// (namespace, local name, value)
    pub attributes: Vec<(Option<String>, String, String)>,
    pub children: Vec<Element>,
    pub text: String,
    /// 1-based.
    pub line: u64,
}

impl Element {
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref() == Some(namespace) && self.name == name
    }

    /// An attribute without namespace (BPMN's own attributes are unqualified).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(ns, n, _)| ns.is_none() && n == name)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn attr_ns(&self, namespace: &str, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(ns, n, _)| ns.as_deref() == Some(namespace) && n == name)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn id(&self) -> &str {
        self.attr("id").unwrap_or(&self.name)
    }

    pub fn child(&self, namespace: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(namespace, name))
    }

    pub fn text(&self) -> String {
        self.text.trim().to_owned()
    }
}

pub fn read(bytes: &[u8], file: &str) -> Result<Element> {
    let config = ParserConfig::new()
        .trim_whitespace(false)
        .ignore_comments(true)
        .cdata_to_characters(true);
    let mut reader = EventReader::new_with_config(bytes, config);
    let mut stack: Vec<Element> = Vec::new();
    // Depth inside a skipped (diagram) subtree.
    let mut skipping = 0usize;
    loop {
        let event = reader.next().map_err(|e| Error::Xml {
            file: file.to_owned(),
            line: e.position().row + 1,
            message: e.msg().to_owned(),
        })?;
        // After `next`, the position is where the event just read starts: the element's own
        // line (before it, it is where the preceding whitespace started).
        let line = reader.position().row + 1;
        match event {
            XmlEvent::StartElement {
                name, attributes, ..
            } => {
                if skipping > 0 || name.namespace.as_deref() == Some(BPMNDI) {
                    skipping += 1;
                    continue;
                }
                stack.push(Element {
                    namespace: name.namespace,
                    name: name.local_name,
                    attributes: attributes
                        .into_iter()
                        .map(|a| (a.name.namespace, a.name.local_name, a.value))
                        .collect(),
                    children: Vec::new(),
                    text: String::new(),
                    line,
                });
            }
            XmlEvent::EndElement { .. } => {
                if skipping > 0 {
                    skipping -= 1;
                    continue;
                }
                let Some(done) = stack.pop() else { continue };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            XmlEvent::Characters(text) if skipping == 0 => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&text);
                }
            }
            XmlEvent::EndDocument => {
                return Err(Error::Xml {
                    file: file.to_owned(),
                    line,
                    message: "no root element".into(),
                })
            }
            _ => {}
        }
    }
}

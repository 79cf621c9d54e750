use crate::handlers::{ExecutionListener, Handler, MessageSend, ServiceTask, UserTaskListener};
use crate::Error;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A plugin version as the DSF writes it: `major.minor.patch.build` (e.g. `1.0.1.0`). Its
/// resource version `major.minor` is the version of the processes and FHIR resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginVersion {
    /// The first number; with `minor`, the resource version.
    pub major: u32,
    /// The second number; with `major`, the resource version.
    pub minor: u32,
    /// The third number, not part of the resource version.
    pub patch: u32,
    /// The fourth number, not part of the resource version.
    pub build: u32,
}

impl PluginVersion {
    /// Parses `1.0.1.0`; a suffix such as `-SNAPSHOT` marks a draft and is accepted.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let numbers = text.split_once('-').map_or(text, |(n, _)| n);
        let parts: Vec<u32> = numbers
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    p.parse().ok()
                }
            })
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Version(text.to_owned()))?;
        match parts[..] {
            [major, minor, patch, build] => Ok(PluginVersion {
                major,
                minor,
                patch,
                build,
            }),
            _ => Err(Error::Version(text.to_owned())),
        }
    }

    /// `major.minor`: what `#{version}` stands for and what `camunda:versionTag` must say.
    pub fn resource_version(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for PluginVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.patch, self.build
        )
    }
}

/// A file of the plugin: where it came from (for error messages) and its text.
#[derive(Debug, Clone)]
pub struct ResourceFile {
    /// Where the file is in the plugin (`bpe/ping.bpmn`), for messages.
    pub path: String,
    /// The text.
    pub contents: Cow<'static, str>,
}

/// Everything the BPE needs to deploy a plugin.
#[derive(Clone)]
pub struct PluginDefinition {
    name: String,
    version: PluginVersion,
    /// As the plugin wrote it, with its draft suffix.
    version_text: String,
    draft: bool,
    release_date: time::Date,
    bpmn: Vec<ResourceFile>,
    fhir: Vec<(String, ResourceFile)>,
    handlers: Vec<(String, Handler)>,
}

impl fmt::Debug for PluginDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginDefinition")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "bpmn",
                &self.bpmn.iter().map(|b| &b.path).collect::<Vec<_>>(),
            )
            .field(
                "handlers",
                &self.handlers.iter().map(|h| &h.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl PluginDefinition {
    /// A plugin named `name` (e.g. `dsf-process-ping-pong`), at `version` (`1.0.1.0`),
    /// released on `release_date` (`2023-09-12`, what `#{date}` stands for).
    pub fn new(name: &str, version: &str, release_date: &str) -> Result<Self, Error> {
        if name.trim().is_empty() {
            return Err(Error::Name);
        }
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let release_date = time::Date::parse(release_date, &format)
            .map_err(|_| Error::ReleaseDate(release_date.to_owned()))?;
        Ok(PluginDefinition {
            name: name.to_owned(),
            version: PluginVersion::parse(version)?,
            version_text: version.to_owned(),
            draft: version.contains('-'),
            release_date,
            bpmn: Vec::new(),
            fhir: Vec::new(),
            handlers: Vec::new(),
        })
    }

    /// Adds a BPMN file (one process per file), e.g. `include_str!("../bpe/ping.bpmn")`.
    pub fn bpmn(mut self, path: &str, contents: impl Into<Cow<'static, str>>) -> Self {
        self.bpmn.push(ResourceFile {
            path: path.to_owned(),
            contents: contents.into(),
        });
        self
    }

    /// Adds a FHIR resource file (XML or JSON) that the process `process_id` (e.g.
    /// `dsfdev_ping`) needs on the local FHIR server.
    pub fn fhir(
        mut self,
        process_id: &str,
        path: &str,
        contents: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.fhir.push((
            process_id.to_owned(),
            ResourceFile {
                path: path.to_owned(),
                contents: contents.into(),
            },
        ));
        self
    }

    /// Binds a service task handler to `name` (a `camunda:class` value or a delegate
    /// expression such as `${greet}`).
    pub fn service_task(self, name: &str, handler: impl ServiceTask + 'static) -> Self {
        self.handler(name, Handler::ServiceTask(Arc::new(handler)))
    }

    /// Binds the handler of a send task, message intermediate throw event or message end
    /// event to `name`.
    pub fn message_send(self, name: &str, handler: impl MessageSend + 'static) -> Self {
        self.handler(name, Handler::MessageSend(Arc::new(handler)))
    }

    /// Binds an execution listener (`camunda:executionListener`) to `name`.
    pub fn execution_listener(self, name: &str, handler: impl ExecutionListener + 'static) -> Self {
        self.handler(name, Handler::ExecutionListener(Arc::new(handler)))
    }

    /// Binds a user task listener (`camunda:taskListener` on a user task) to `name`.
    pub fn user_task_listener(self, name: &str, handler: impl UserTaskListener + 'static) -> Self {
        self.handler(name, Handler::UserTaskListener(Arc::new(handler)))
    }

    /// Binds a handler of any kind to `name`.
    pub fn handler(mut self, name: &str, handler: Handler) -> Self {
        self.handlers.push((name.to_owned(), handler));
        self
    }

    /// Binds one handler under several names, e.g. a Rust name and the Java class name a
    /// DSF BPMN file uses, so that the Java plugin's BPMN files run unchanged.
    pub fn handler_named(self, names: &[&str], handler: Handler) -> Self {
        names
            .iter()
            .fold(self, |d, name| d.handler(name, handler.clone()))
    }

    /// The plugin's name (`dsf-process-ping-pong`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version, parsed.
    pub fn version(&self) -> PluginVersion {
        self.version
    }

    /// The version as the plugin wrote it (`1.0.1.0`, `1.1.0.0-SNAPSHOT`).
    pub fn version_text(&self) -> &str {
        &self.version_text
    }

    /// A draft (`-SNAPSHOT`, `-RC1` …) plugin's resources are written again on every start.
    pub fn is_draft(&self) -> bool {
        self.draft
    }

    /// The release date.
    pub fn release_date(&self) -> time::Date {
        self.release_date
    }

    /// `yyyy-mm-dd`, what `#{date}` stands for.
    pub fn release_date_text(&self) -> String {
        let d = self.release_date;
        format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
    }

    /// The BPMN files.
    pub fn bpmn_files(&self) -> &[ResourceFile] {
        &self.bpmn
    }

    /// FHIR files with the id of the process that needs them.
    pub fn fhir_files(&self) -> &[(String, ResourceFile)] {
        &self.fhir
    }

    /// The handlers with the names they are bound to, in the order they were bound.
    pub fn handlers(&self) -> &[(String, Handler)] {
        &self.handlers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = PluginVersion::parse("1.0.1.0").unwrap();
        assert_eq!(v.resource_version(), "1.0");
        assert_eq!(v.to_string(), "1.0.1.0");
        assert!(PluginVersion::parse("2.3.0.1-SNAPSHOT").is_ok());
        for bad in [
            "1.0",
            "1.0.1",
            "a.b.c.d",
            "1..0.0",
            "1.0.0.0.0",
            "99999999999.0.0.0",
        ] {
            assert!(PluginVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn definition_checks_its_metadata() {
        assert!(PluginDefinition::new("", "1.0.0.0", "2026-01-01").is_err());
        assert!(PluginDefinition::new("p", "1.0.0.0", "2026-13-01").is_err());
        let p = PluginDefinition::new("p", "1.2.0.0-RC1", "2026-02-03").unwrap();
        assert!(p.is_draft());
        assert_eq!(p.release_date_text(), "2026-02-03");
    }
}

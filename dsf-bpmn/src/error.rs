/// A BPMN file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is not well-formed XML.
    #[error("{file}:{line}: not well-formed XML: {message}")]
    Xml {
        /// The file's name as the caller gave it.
        file: String,
        /// Where the XML breaks.
        line: u64,
        /// What the XML reader says.
        message: String,
    },
    /// The XML is not a BPMN file this engine takes (an element or reference that is wrong
    /// or unsupported).
    #[error("{file}:{line}: element '{element}': {message}")]
    Invalid {
        /// The file's name as the caller gave it.
        file: String,
        /// The element's line.
        line: u64,
        /// The element's id, or its name when it has none.
        element: String,
        /// What is wrong.
        message: String,
    },
    /// A process cannot run on this engine as deployed (a handler missing, an expression that
    /// does not parse, an element the engine does not execute).
    #[error("process '{process}', element '{element}': {message}")]
    Deploy {
        /// The process id.
        process: String,
        /// The element's id.
        element: String,
        /// What is wrong.
        message: String,
    },
    /// A running instance hit a problem (an expression failing, no gateway flow matching).
    #[error("instance {instance}, element '{element}': {message}")]
    Runtime {
        /// The instance's id.
        instance: String,
        /// The element where it happened.
        element: String,
        /// What happened.
        message: String,
    },
    /// A message nobody waits for and no start event takes, or a user task that is not open.
    #[error("{0}")]
    NoMatch(String),
}

/// A result with this crate's [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

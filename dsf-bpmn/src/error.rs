/// A BPMN file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{file}:{line}: not well-formed XML: {message}")]
    Xml {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{file}:{line}: element '{element}': {message}")]
    Invalid {
        file: String,
        line: u64,
        element: String,
        message: String,
    },
    /// A process cannot run on this engine as deployed (a handler missing, an expression that
    /// does not parse, an element the engine does not execute).
    #[error("process '{process}', element '{element}': {message}")]
    Deploy {
        process: String,
        element: String,
        message: String,
    },
    /// A running instance hit a problem (an expression failing, no gateway flow matching).
    #[error("instance {instance}, element '{element}': {message}")]
    Runtime {
        instance: String,
        element: String,
        message: String,
    },
    /// A message nobody waits for and no start event takes, or a user task that is not open.
    #[error("{0}")]
    NoMatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

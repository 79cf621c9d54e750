/// A BPMN file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

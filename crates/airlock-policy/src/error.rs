//! Errors from loading a policy directory and from deciding one action.

use std::path::PathBuf;

/// A policy directory that cannot be served. Nothing is half-loaded: the
/// caller keeps serving whatever it had before.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file in it could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The directory holds no `*.cedar` file.
    #[error("no *.cedar files in {0}")]
    Empty(PathBuf),
    /// Cedar refused the policy text.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Cedar's message, with its own location details.
        message: String,
    },
    /// An Airlock annotation is malformed, unknown, or misplaced.
    #[error("{path}:{line}: policy {policy:?}: {message}")]
    Annotation {
        /// The file.
        path: PathBuf,
        /// The line the policy starts on.
        line: usize,
        /// The policy's id.
        policy: String,
        /// What is wrong.
        message: String,
    },
    /// Two policies share an `@id`.
    #[error("{path}:{line}: policy id {policy:?} is already used in {other}")]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The line of the second policy.
        line: usize,
        /// The shared id.
        policy: String,
        /// Where the first one is.
        other: String,
    },
    /// The schema file is invalid.
    #[error("schema {path}: {message}")]
    Schema {
        /// The schema file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The policies do not validate against the schema.
    #[error("policies do not validate against the schema: {0}")]
    Validation(String),
    /// `entities.json` or the users cannot be turned into Cedar entities.
    #[error("entities: {0}")]
    Entities(String),
}

/// An action that cannot be put to Cedar at all. Callers answer 400; policy
/// errors during evaluation are not this: they are a deny.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The resource attributes are not valid Cedar values.
    #[error("resource attrs: {0}")]
    Attrs(String),
    /// The context is not a valid Cedar record (or not as the schema says).
    #[error("context: {0}")]
    Context(String),
    /// The request does not fit the schema.
    #[error("request: {0}")]
    Request(String),
}

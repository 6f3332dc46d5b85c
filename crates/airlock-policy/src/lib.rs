//! Cedar policies with Airlock's approval annotations: loading a policy
//! directory, deciding one action, and running policy test cases.
//!
//! Cedar answers allow or deny; this crate reads the annotations on the
//! policies that determined the answer to turn some allows into
//! `approval_required`. Nothing here does network or database I/O, so an
//! enforcement point can embed it.
#![forbid(unsafe_code)]

mod annotations;
pub mod cases;
mod compiled;
mod engine;
mod error;
mod index;
pub mod limits;
mod locate;

pub use annotations::Approval;
pub use engine::{Directory, PolicyEngine, PolicySource};
pub use error::{DecideError, LoadError};

//! How the domain types appear in the OpenAPI document: the newtypes that
//! serialize as strings say so, with the pattern their parser enforces, so
//! the document and the parser cannot disagree about what a name is.

use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// A string schema with its description, pattern and length bounds.
pub(crate) fn string(
    description: &str,
    pattern: Option<&str>,
    min: usize,
    max: usize,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .min_length(Some(min))
        .max_length(Some(max))
        .into()
}

/// Any JSON object (free-form maps: params, context, details).
pub(crate) fn free_object(description: &str) -> RefOr<Schema> {
    Object::builder()
        .schema_type(Type::Object)
        .description(Some(description))
        .into()
}

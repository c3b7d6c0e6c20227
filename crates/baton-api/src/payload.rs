//! `Payload`: a task's JSON payload carried as raw text. The server stores the
//! text exactly as the submitter sent it and sends it back without parsing it
//! into a tree, so large payloads cost one validation pass, not a rebuild.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType};

/// Any JSON value, kept as its original text.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Wraps JSON text; fails if it is not one valid JSON value.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Self)
    }

    /// Serializes a value into a payload.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The payload parsed into a value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.get()).expect("a payload always holds valid JSON")
    }

    pub fn into_string(self) -> String {
        let boxed: Box<str> = self.0.into();
        boxed.into_string()
    }
}

impl PartialEq for Payload {
    /// Payloads are equal when their text is; `{"a":1}` and `{ "a": 1 }` differ.
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Self)
    }
}

impl utoipa::PartialSchema for Payload {
    /// Any JSON value: the schema leaves the type open.
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .description(Some("Any JSON value, stored once and sent back exactly as submitted."))
            .examples([serde_json::json!({"order": 1042, "items": ["a", "b"]})])
            .build()
            .into()
    }
}

impl utoipa::ToSchema for Payload {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Payload")
    }
}

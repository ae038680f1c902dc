//! `MetaValue`: one value of a GGUF file's metadata (integers, floats, booleans,
//! strings and arrays, kept or skipped), with typed accessors.

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array; `items` is `None` when its contents were skipped.
    Array {
        /// The GGUF value type of the elements.
        elem: u32,
        /// Its length.
        len: u64,
        /// The elements, unless skipped.
        items: Option<Vec<MetaValue>>,
    },
}

impl MetaValue {
    /// As a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::Uint(u) => Some(u),
            MetaValue::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    /// As a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Uint(u) => Some(u as f64),
            MetaValue::Int(i) => Some(i as f64),
            MetaValue::Float(f) => Some(f),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The items of a kept array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array {
                items: Some(items), ..
            } => Some(items),
            _ => None,
        }
    }

    /// The length of an array (kept or skipped).
    pub fn array_len(&self) -> Option<u64> {
        match self {
            MetaValue::Array { len, .. } => Some(*len),
            _ => None,
        }
    }
}

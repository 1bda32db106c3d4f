//! Raw ids: what an event log holds before vocabularies map it to indices.

/// A raw id as found in an event log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RawId {
    /// An integer id.
    Int(i64),
    /// A string id.
    Str(String),
}

impl std::fmt::Display for RawId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawId::Int(x) => write!(f, "{x}"),
            RawId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<i64> for RawId {
    fn from(x: i64) -> Self {
        RawId::Int(x)
    }
}

impl From<&str> for RawId {
    fn from(s: &str) -> Self {
        RawId::Str(s.to_string())
    }
}

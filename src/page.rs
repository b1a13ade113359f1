//! Pagination: `?cursor=&limit=` in, `{items, next_cursor}` out. Cursors are opaque to
//! clients (hex of a position in an index) and checked before use.

use serde::Serialize;

use crate::crypto::hex;

pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_LIMIT: usize = 50;
const MAX_CURSOR: usize = 256;

/// A position to continue a listing from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(Vec<u8>);

impl Cursor {
    pub fn from_position(pos: &[u8]) -> Self {
        Self(pos.to_vec())
    }

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        const BAD: &str = "must be a cursor returned by a previous page";
        if s.is_empty() || s.len() > MAX_CURSOR {
            return Err(BAD);
        }
        hex::decode(s).map(Self).ok_or(BAD)
    }

    pub fn position(&self) -> &[u8] {
        &self.0
    }

    pub fn encode(&self) -> String {
        hex::encode(&self.0)
    }
}

/// A validated page request.
#[derive(Clone, Debug)]
pub struct PageRequest {
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            cursor: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl PageRequest {
    pub fn new(
        cursor: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Self, (&'static str, &'static str)> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(l) if (1..=MAX_LIMIT as u64).contains(&l) => l as usize,
            Some(_) => return Err(("limit", "must be between 1 and 100")),
        };
        let cursor = cursor
            .map(Cursor::parse)
            .transpose()
            .map_err(|m| ("cursor", m))?;
        Ok(Self { cursor, limit })
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

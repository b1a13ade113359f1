//! Pagination: `?cursor=&limit=` in, `{items, next_cursor}` out. Cursors are opaque to
//! clients (hex of a position in an index) and checked before use.

use std::future::Future;

use serde::Serialize;

use crate::{
    crypto::hex,
    store::{IndexName, Store, StoreError},
};

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

/// One page of objects found through an index: scans `index` under `prefix` after the
/// request's cursor, turns each entry's id into an object with `fetch` (`None` skips it: gone
/// meanwhile, or not the caller's), and points `next_cursor` at the last position scanned when
/// more entries follow. The cursor is a position in that index only, so it tells nothing about
/// objects the scan does not cover.
pub async fn from_index<T, E, F, Fut>(
    store: &dyn Store,
    index: IndexName,
    prefix: &[u8],
    page: &PageRequest,
    mut fetch: F,
) -> Result<Page<T>, E>
where
    E: From<StoreError>,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let entries = store
        .scan(
            index,
            prefix,
            page.cursor.as_ref().map(Cursor::position),
            page.limit + 1,
        )
        .await?;
    let more = entries.len() > page.limit;
    let mut items = Vec::with_capacity(page.limit.min(entries.len()));
    let mut last = None;
    for e in entries.into_iter().take(page.limit) {
        if let Some(item) = fetch(e.id).await? {
            items.push(item);
        }
        last = Some(e.key);
    }
    Ok(Page {
        items,
        next_cursor: more
            .then(|| last.map(|k| Cursor::from_position(&k).encode()))
            .flatten(),
    })
}

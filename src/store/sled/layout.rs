//! The one range scan over the sled tree. Its keys are the raw layout every engine's backup
//! uses ([`crate::store::raw`]): sled stores it as it is.

use std::ops::Bound;

use super::io;
use crate::store::StoreError;
pub(super) use crate::store::raw::{head_key, index_key, meta_key, record_key};

/// The one range scan: the entries whose keys start with `prefix`, in key order, strictly after
/// `prefix + after` when given, at most `limit` of them, each turned into a `T` by
/// `each(key without the prefix, value)`.
pub(super) fn range<T>(
    db: &sled::Db,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let start = match after {
        Some(a) => Bound::Excluded([prefix, a].concat()),
        None => Bound::Included(prefix.to_vec()),
    };
    let mut out = Vec::new();
    for item in db.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
        let (k, v) = item.map_err(io)?;
        if !k.starts_with(prefix) || out.len() >= limit {
            break;
        }
        out.push(each(&k[prefix.len()..], &v)?);
    }
    Ok(out)
}

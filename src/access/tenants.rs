//! Tenants: they own APIs, keys and certificates. A tenant's name is immutable and is what
//! paths, `tenant` fields and SPIFFE ids use.

use serde::{Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    ids::{TenantId, TenantName},
    store::{Kind, Record},
};

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: TenantName,
    pub created_at: Timestamp,
}

/// Tenant records are keyed by name (names are unique and immutable).
impl Record for Tenant {
    const KIND: Kind = Kind("tenant");
}

//! The lifecycle status of a stored credential.

use serde::{Deserialize, Serialize};

/// Credential status (CONTRACT.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredStatus {
    /// Usable.
    Active,
    /// Stored but not usable yet (e.g. Google without a refresh token).
    Inactive,
    /// The provider rejected it; outbound calls answer `credential_revoked`.
    Revoked,
}

//! Named operators and what each role may do (CONTRACT.md §8.2): `viewer` reads, `operator`
//! also changes credentials and routes, `admin` also rotates keys, sets the log level and
//! lists users. Tokens are kept only as SHA-256 digests and compared in constant time.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a principal may do; ordered, each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Status, routes, audit, metrics, key status; nothing that changes anything.
    Viewer,
    /// Also put, verify, delete, restore credentials, routes, the Google connect flow.
    Operator,
    /// Also key rotation, the log level and the user list.
    Admin,
}

impl Role {
    /// `viewer`, `operator` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// Whether `name` may name a user: 1 to 64 letters, digits, `.`, `_`, `-` or `@` (it is an
/// audit actor and a file name for `admin token new --out`).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'@'))
}

/// One `[[admin.users]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminUser {
    /// The name audit entries carry.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// SHA-256 of the user's token.
    pub token_sha256: [u8; 32],
}

impl fmt::Debug for AdminUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminUser").field("name", &self.name).field("role", &self.role).finish()
    }
}

/// Who is asking: the actor audit entries name, and their role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub(crate) actor: String,
    pub(crate) role: Role,
}

/// Whose token `given` is: a user's, or the `token_file` one (`admin`). Every digest is
/// compared, in constant time, whatever matches first.
pub(crate) fn principal_for_token(
    given: &str,
    users: &[AdminUser],
    token_file: Option<&[u8; 32]>,
    ip: std::net::IpAddr,
) -> Option<Principal> {
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut found = None;
    for u in users {
        if bool::from(digest.ct_eq(&u.token_sha256)) && found.is_none() {
            found = Some(Principal { actor: u.name.clone(), role: u.role });
        }
    }
    if let Some(t) = token_file {
        if bool::from(digest.ct_eq(t)) && found.is_none() {
            found = Some(Principal { actor: format!("token:{}@{ip}", hex::encode(&t[..4])), role: Role::Admin });
        }
    }
    found
}

/// A new user token (32 random bytes, `kwu_` + base64url) and its SHA-256 in hex.
pub fn new_token() -> Result<(zeroize::Zeroizing<String>, String), getrandom::Error> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut raw[..])?;
    let token =
        zeroize::Zeroizing::new(format!("kwu_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])));
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((token, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_maps_to_its_user_and_the_token_file_to_admin() {
        let (alice, alice_hex) = new_token().unwrap();
        let (bob, _) = new_token().unwrap();
        let mut d = [0u8; 32];
        hex::decode_to_slice(&alice_hex, &mut d).unwrap();
        let users = vec![AdminUser { name: "alice".into(), role: Role::Viewer, token_sha256: d }];
        let file: [u8; 32] = Sha256::digest(b"file-token").into();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            principal_for_token(&alice, &users, Some(&file), ip),
            Some(Principal { actor: "alice".into(), role: Role::Viewer })
        );
        assert_eq!(principal_for_token("file-token", &users, Some(&file), ip).unwrap().role, Role::Admin);
        assert_eq!(principal_for_token(&bob, &users, Some(&file), ip), None);
        assert!(alice.starts_with("kwu_") && alice.len() > 40);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}

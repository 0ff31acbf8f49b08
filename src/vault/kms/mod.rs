//! Master keys held by a KMS or an HSM: keyward asks it to wrap and unwrap tenant data
//! keys, and the key that does so never enters keyward's memory. One file per source.

pub(crate) mod transit;

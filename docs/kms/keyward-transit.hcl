# keyward's Vault / OpenBao policy: the transit key `keyward` and nothing else.
# encrypt/decrypt wrap and unwrap tenant data keys; rewrap moves them to the newest key
# version during `keyward key rotate`; reading the key's description (never its material)
# tells keyward that version. Renewing and looking up its own token come from the
# `default` policy. tests/kms.rs logs in with exactly this policy.
path "transit/encrypt/keyward" {
  capabilities = ["update"]
}
path "transit/decrypt/keyward" {
  capabilities = ["update"]
}
path "transit/rewrap/keyward" {
  capabilities = ["update"]
}
path "transit/keys/keyward" {
  capabilities = ["read"]
}

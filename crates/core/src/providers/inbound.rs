//! Inbound verification (PROVIDERS.md §1, §7, §8 and each provider's section): pure
//! functions from a delivery and candidate keys to an [`Accepted`] or a [`Reject`].
//!
//! Rules kept everywhere: MACs are computed over the raw bytes received and compared in
//! constant time as decoded bytes; shared secrets are compared as SHA-256 digests; a
//! header present twice is a `bad_signature`; a malformed signature entry is skipped,
//! never fatal; timestamps are `^[0-9]+$` and edges of the window pass; the MAC is checked
//! before the window, so a forgery always reads `bad_signature`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// One delivery as received.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The URL the provider called (public base URL + request-target, byte for byte).
    pub url: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The raw body.
    pub body: &'a [u8],
    /// Unix seconds now.
    pub now: u64,
}

/// Why a delivery failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Missing, malformed or non-matching signature (code `bad_signature`).
    BadSignature(String),
    /// Signed correctly but outside the time window (code `stale_timestamp`).
    StaleTimestamp(String),
}

impl Reject {
    /// The public code.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::BadSignature(_) => "bad_signature",
            Reject::StaleTimestamp(_) => "stale_timestamp",
        }
    }

    /// What exactly failed (for operators; never a secret).
    pub fn detail(&self) -> &str {
        match self {
            Reject::BadSignature(d) | Reject::StaleTimestamp(d) => d,
        }
    }
}

/// Facts about a verified delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    /// Identity for replay protection, when the scheme gives one.
    pub replay_key: Option<String>,
    /// How long (seconds) the replay key must be remembered.
    pub replay_keep: u64,
    /// The provider's delivery id (`Keyward-Event-Id`).
    pub event_id: Option<String>,
    /// Headers that carried a secret and must not reach the app.
    pub strip: Vec<&'static str>,
}

/// The one value of a header; absent, empty or duplicated is an error (§1.2).
pub(crate) fn single<N>(h: &HeaderMap, name: N) -> Result<&str, Reject>
where
    N: http::header::AsHeaderName + std::fmt::Display + Copy,
{
    let mut it = h.get_all(name).iter();
    let v = it.next().ok_or_else(|| Reject::BadSignature(format!("no {name} header")))?;
    if it.next().is_some() {
        return Err(Reject::BadSignature(format!("{name} appears more than once")));
    }
    let s = v.to_str().map_err(|_| Reject::BadSignature(format!("{name} is not ASCII")))?;
    if s.is_empty() {
        return Err(Reject::BadSignature(format!("{name} is empty")));
    }
    Ok(s)
}

/// `^[0-9]+$`, parsed.
pub(crate) fn timestamp(s: &str, what: &str) -> Result<u64, Reject> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) || s.len() > 19 {
        return Err(Reject::BadSignature(format!("{what} must be a whole number of seconds (^[0-9]+$)")));
    }
    s.parse().map_err(|_| Reject::BadSignature(format!("{what} is out of range")))
}

/// `now - past <= t <= now + future`, edges included.
pub(crate) fn window(t: u64, now: u64, past: u64, future: u64) -> Result<(), Reject> {
    if t.saturating_add(past) < now {
        return Err(Reject::StaleTimestamp(format!(
            "timestamp {t} is {} s in the past; the window allows {past} s",
            now - t
        )));
    }
    if t > now.saturating_add(future) {
        return Err(Reject::StaleTimestamp(format!(
            "timestamp {t} is {} s in the future; the window allows {future} s",
            t - now
        )));
    }
    Ok(())
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

pub(crate) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time equality of byte strings of the expected length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Compares shared secrets as SHA-256 digests so the length does not leak (§1.3).
pub(crate) fn secret_eq(given: &[u8], key: &[u8]) -> bool {
    let a: [u8; 32] = Sha256::digest(given).into();
    let b: [u8; 32] = Sha256::digest(key).into();
    bool::from(a.ct_eq(&b))
}

/// Strict RFC 4648 base64 (padding required, canonical).
pub(crate) fn strict_b64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).ok()
}

/// Lower-case hex of exactly `n` bytes, or `None` (uppercase is skipped, §6.2).
pub(crate) fn lower_hex(s: &str, n: usize) -> Option<Vec<u8>> {
    if s.len() != n * 2 || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    hex::decode(s).ok()
}

// ---------------------------------------------------------------------------------------
// Standard Webhooks (§7): Resend (svix-* names) and generic providers
// ---------------------------------------------------------------------------------------

/// Decodes a `whsec_` key (prefix optional, standard alphabet, padding optional), into
/// memory wiped on drop: the decoded bytes are the secret itself.
pub(crate) fn whsec_key(k: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let s = std::str::from_utf8(k).ok()?;
    let s = s.strip_prefix("whsec_").unwrap_or(s);
    super::resend::WHSEC_B64.decode(s).ok().map(Zeroizing::new)
}

/// Standard Webhooks with `svix-*` preferred over `webhook-*` names.
pub fn standard_webhooks(d: &Delivery<'_>, keys: &[&[u8]], tolerance: u64) -> Result<Accepted, Reject> {
    // Names made once, not formatted from the prefix (four `format!` calls a delivery) nor
    // parsed from `&str` on each lookup.
    static SVIX: [HeaderName; 3] = [
        HeaderName::from_static("svix-id"),
        HeaderName::from_static("svix-timestamp"),
        HeaderName::from_static("svix-signature"),
    ];
    static WEBHOOK: [HeaderName; 3] = [
        HeaderName::from_static("webhook-id"),
        HeaderName::from_static("webhook-timestamp"),
        HeaderName::from_static("webhook-signature"),
    ];
    let [id_name, ts_name, sig_name] =
        if d.headers.contains_key(&SVIX[0]) || d.headers.contains_key(&SVIX[2]) { &SVIX } else { &WEBHOOK };
    let id = single(d.headers, id_name)?;
    let ts_s = single(d.headers, ts_name)?;
    let sigs = single(d.headers, sig_name)?;
    let ts = timestamp(ts_s, ts_name.as_str())?;
    let decoded_keys: Vec<Zeroizing<Vec<u8>>> = keys.iter().filter_map(|k| whsec_key(k)).collect();
    if decoded_keys.is_empty() {
        return Err(Reject::BadSignature("the webhook secret is not a valid whsec_ key".into()));
    }
    let mut ok = false;
    let mut considered = 0;
    for entry in sigs.split(' ').filter(|e| !e.is_empty()) {
        let Some((ver, b64)) = entry.split_once(',') else { continue };
        if ver != "v1" {
            continue;
        }
        let Some(raw) = strict_b64(b64).filter(|r| r.len() == 32) else { continue };
        considered += 1;
        for k in &decoded_keys {
            let mac = hmac_sha256(k, &[id.as_bytes(), b".", ts_s.as_bytes(), b".", d.body]);
            ok |= ct_eq(&mac, &raw);
        }
    }
    if !ok {
        return Err(Reject::BadSignature(format!(
            "none of {considered} well-formed v1 signatures matches (of {} keys)",
            decoded_keys.len()
        )));
    }
    window(ts, d.now, tolerance, tolerance)?;
    Ok(Accepted {
        replay_key: Some(["id:", id].concat()),
        replay_keep: tolerance * 2 + 300,
        event_id: Some(id.to_string()),
        strip: vec![],
    })
}

// ---------------------------------------------------------------------------------------
// Stripe-style `t=…,v1=…` (§8) and its ElevenLabs `v0` variant (§6.2)
// ---------------------------------------------------------------------------------------

/// Parameters of a Stripe-style scheme.
#[derive(Debug, Clone, Copy)]
pub struct StripeStyle<'a> {
    /// Header carrying `t=…,vN=…`.
    pub header: &'a str,
    /// Signature label (`v1`; ElevenLabs `v0`).
    pub label: &'a str,
    /// Seconds allowed into the past.
    pub past: u64,
    /// Seconds allowed into the future.
    pub future: u64,
}

/// Verifies `t=…,vN=…` (key used as given, never decoded).
pub fn stripe_style(d: &Delivery<'_>, keys: &[&[u8]], p: StripeStyle<'_>) -> Result<Accepted, Reject> {
    let h = single(d.headers, p.header)?;
    let mut t = None;
    let mut t_count = 0;
    let mut sigs = Vec::new();
    let mut labelled = 0;
    for part in h.split(',') {
        let Some((k, v)) = part.split_once('=') else { continue };
        if k == "t" {
            t_count += 1;
            t = Some(v);
        } else if k == p.label {
            labelled += 1;
            if let Some(raw) = lower_hex(v, 32) {
                sigs.push((v, raw));
            }
        }
    }
    if t_count != 1 {
        return Err(Reject::BadSignature(format!("{} must carry exactly one t= (found {t_count})", p.header)));
    }
    let t_s = t.unwrap_or_default();
    let ts = timestamp(t_s, "t")?;
    if labelled == 0 {
        return Err(Reject::BadSignature(format!("{} has no {}= signature", p.header, p.label)));
    }
    let mut matched = None;
    for k in keys {
        let mac = hmac_sha256(k, &[t_s.as_bytes(), b".", d.body]);
        for (text, raw) in &sigs {
            if ct_eq(&mac, raw) {
                matched = Some(*text);
            }
        }
    }
    let Some(sig) = matched else {
        return Err(Reject::BadSignature(format!(
            "none of {} well-formed {} signatures matches (of {} keys)",
            sigs.len(),
            p.label,
            keys.len()
        )));
    };
    window(ts, d.now, p.past, p.future)?;
    Ok(Accepted {
        replay_key: Some(["t:", t_s, ":", sig].concat()),
        replay_keep: p.past + p.future + 300,
        event_id: None,
        strip: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const SW_SECRET: &[u8] = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw(sig: &str, now: u64, extra: &[(&str, &str)], keys: &[&[u8]]) -> Result<Accepted, Reject> {
        let mut pairs = vec![
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", sig),
        ];
        pairs.extend_from_slice(extra);
        let h = headers(&pairs);
        standard_webhooks(&Delivery { method: "POST", url: "https://x", headers: &h, body: SW_BODY, now }, keys, 300)
    }

    #[test]
    fn a_decoded_whsec_key_is_wiped_when_dropped() {
        // The base64 form lives in the zeroized credential; the raw key it decodes to is the
        // secret itself and must not be left in freed heap memory either.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let key = whsec_key(SW_SECRET).expect("the public vector's key decodes");
        wiped_on_drop(&key);
        assert_eq!(key.len(), 24);
    }

    /// The attacker's view of the test above: after a verification, this process's
    /// writable memory is searched for the raw key, as a core dump or a read of freed
    /// memory would see it.
    #[cfg(target_os = "linux")]
    #[test]
    fn no_decoded_whsec_key_is_left_in_memory_after_a_verification() {
        use std::io::{Read, Seek, SeekFrom};
        use zeroize::Zeroize;
        const LEN: usize = 96;
        // The raw key is held only inverted here, so that the search itself keeps no copy
        // of it; the plain bytes exist once, to be encoded, in memory wiped on drop.
        let inverted: Vec<u8> = (0..LEN as u32).map(|i| !(i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut plain = Zeroizing::new(inverted.iter().map(|b| !b).collect::<Vec<u8>>());
        let secret = format!("whsec_{}", STANDARD.encode(plain.as_slice()));
        plain.zeroize();
        drop(plain);
        // Maps and the read buffer first: nothing the search allocates after the
        // verification may land in the key's freed chunk and overwrite it.
        let mut maps = String::new();
        std::fs::File::open("/proc/self/maps").unwrap().read_to_string(&mut maps).unwrap();
        let regions: Vec<(u64, u64)> = maps
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("rw-p"))
            .filter_map(|l| {
                let (a, b) = l.split_whitespace().next()?.split_once('-')?;
                Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
            })
            .collect();
        let mut buf = vec![0u8; 1 << 20];
        let mut mem = std::fs::File::open("/proc/self/mem").unwrap();

        let err = sw(SW_SIG, 1614265330, &[], &[secret.as_bytes()]).unwrap_err();
        assert_eq!(err.code(), "bad_signature", "the key decoded and was tried");

        // glibc writes its free-list links over a freed chunk's first 16 bytes: the rest of
        // the key is what would survive there.
        let tail = &inverted[16..];
        let mut found = false;
        for &(start, end) in &regions {
            let mut at = start;
            while at < end && !found {
                let n = ((end - at) as usize).min(buf.len());
                if mem.seek(SeekFrom::Start(at)).is_err() || mem.read_exact(&mut buf[..n]).is_err() {
                    break;
                }
                found = buf[..n].windows(tail.len()).any(|w| w.iter().zip(tail).all(|(m, i)| *m == !i));
                // Overlap the next read so that a copy across the boundary is seen.
                at += (n - tail.len().min(n)).max(1) as u64;
            }
        }
        buf.zeroize();
        assert!(!found, "the decoded key (bytes 16..) is still in this process's memory");
    }

    #[test]
    fn standard_webhooks_public_vectors() {
        // sw-1, sw-2 (key without prefix), sw-3, sw-4.
        assert!(sw(SW_SIG, 1614265330, &[], &[SW_SECRET]).is_ok());
        assert!(sw(SW_SIG, 1614265330, &[], &[b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).is_ok());
        assert_eq!(
            sw("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=", 1614265330, &[], &[SW_SECRET]).unwrap_err().code(),
            "bad_signature"
        );
        let multi = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        assert!(sw(multi, 1614265330, &[], &[SW_SECRET]).is_ok());
        // sw-6: one second outside on either side; the edges pass.
        assert_eq!(sw(SW_SIG, 1614265631, &[], &[SW_SECRET]).unwrap_err().code(), "stale_timestamp");
        assert_eq!(sw(SW_SIG, 1614265029, &[], &[SW_SECRET]).unwrap_err().code(), "stale_timestamp");
        assert!(sw(SW_SIG, 1614265630, &[], &[SW_SECRET]).is_ok());
        assert!(sw(SW_SIG, 1614265030, &[], &[SW_SECRET]).is_ok());
        // A rotation: the previous key still verifies.
        assert!(sw(SW_SIG, 1614265330, &[], &[b"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", SW_SECRET]).is_ok());
    }

    #[test]
    fn standard_webhooks_bad_headers() {
        // sw-7: a non-numeric timestamp; sw-8: no id.
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "hello"),
            ("webhook-signature", SW_SIG),
        ]);
        assert_eq!(
            standard_webhooks(
                &Delivery { method: "POST", url: "", headers: &h, body: SW_BODY, now: 1614265330 },
                &[SW_SECRET],
                300
            )
            .unwrap_err()
            .code(),
            "bad_signature"
        );
        let h = headers(&[("webhook-timestamp", "1614265330"), ("webhook-signature", SW_SIG)]);
        assert!(standard_webhooks(
            &Delivery { method: "POST", url: "", headers: &h, body: SW_BODY, now: 1614265330 },
            &[SW_SECRET],
            300
        )
        .is_err());
        // Strict base64: a stray character fails the entry (the SDK is lenient).
        assert!(sw("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE!", 1614265330, &[], &[SW_SECRET]).is_err());
        // v2 label with a valid MAC is not accepted.
        assert!(sw("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", 1614265330, &[], &[SW_SECRET]).is_err());
        // A duplicated signature header is refused.
        assert!(sw(SW_SIG, 1614265330, &[("webhook-signature", SW_SIG)], &[SW_SECRET]).is_err());
        // "+1" or " 1614265330" style timestamps are refused.
        for ts in ["+1614265330", " 1614265330", "1614265330.0", "1.6e9"] {
            let h = headers(&[
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
                ("webhook-timestamp", ts),
                ("webhook-signature", SW_SIG),
            ]);
            assert!(
                standard_webhooks(
                    &Delivery { method: "POST", url: "", headers: &h, body: SW_BODY, now: 1614265330 },
                    &[SW_SECRET],
                    300
                )
                .is_err(),
                "{ts}"
            );
        }
    }

    #[test]
    fn svix_names_win_over_webhook_names() {
        let h = headers(&[
            ("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", SW_SIG),
            ("webhook-id", "other"),
            ("webhook-timestamp", "1"),
            ("webhook-signature", "v1,AAAA"),
        ]);
        let a = standard_webhooks(
            &Delivery { method: "POST", url: "", headers: &h, body: SW_BODY, now: 1614265330 },
            &[SW_SECRET],
            300,
        )
        .unwrap();
        assert_eq!(a.event_id.as_deref(), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"));
    }

    const ST_BODY: &[u8] = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\",\n  \"data\": { \"object\": { \"id\": \"rdr_123\", \"object\": \"terminal.reader\" } }\n}";
    const ST_SIG: &str = "t=12345,v1=07b1ede164afb7b5de91267ffa656f568c65d6e0783ce0ac55ee094643578eda";

    fn st(h: &str, now: u64) -> Result<Accepted, Reject> {
        let hm = headers(&[("stripe-signature", h)]);
        stripe_style(
            &Delivery { method: "POST", url: "", headers: &hm, body: ST_BODY, now },
            &[b"whsec_test_secret"],
            StripeStyle { header: "stripe-signature", label: "v1", past: 300, future: 300 },
        )
    }

    #[test]
    fn stripe_style_public_vectors() {
        assert_eq!(ST_BODY.len(), 125);
        assert!(st(ST_SIG, 12345).is_ok());
        assert!(st(&format!("{ST_SIG},v1=bad_signature"), 12345).is_ok());
        assert_eq!(st(&ST_SIG.replace("v1=", "v0="), 12345).unwrap_err().code(), "bad_signature");
        assert_eq!(st("t=12345,v1=bad_signature", 12345).unwrap_err().code(), "bad_signature");
        assert_eq!(st("bad_header", 12345).unwrap_err().code(), "bad_signature");
        assert_eq!(st("i'm not even a real signature header", 12345).unwrap_err().code(), "bad_signature");
        assert_eq!(st(ST_SIG, 12646).unwrap_err().code(), "stale_timestamp");
        assert_eq!(st(&format!("t=12345,{ST_SIG}"), 12345).unwrap_err().code(), "bad_signature", "exactly one t");
    }

    fn el(h: Option<&str>, now: u64) -> Result<Accepted, Reject> {
        let hm = h.map(|h| headers(&[("elevenlabs-signature", h)])).unwrap_or_default();
        stripe_style(
            &Delivery {
                method: "POST",
                url: "",
                headers: &hm,
                body: br#"{"event_type": "speech.completed", "id": "123456"}"#,
                now,
            },
            &[b"test_secret"],
            StripeStyle { header: "elevenlabs-signature", label: "v0", past: 1800, future: 300 },
        )
    }

    #[test]
    fn elevenlabs_public_vectors() {
        let good = "t=1600000000,v0=f8a0d1dc33ee963cb54d2f31514555995e93313c9d2042c030adbb82b87fae13";
        assert!(el(Some(good), 1600000000).is_ok());
        assert_eq!(el(Some(good), 1600001860).unwrap_err().code(), "stale_timestamp");
        assert!(el(Some(good), 1600001800).is_ok(), "exactly 1800 s passes");
        assert_eq!(el(Some(good), 1599999699).unwrap_err().code(), "stale_timestamp", "more than 300 s ahead");
        assert_eq!(el(Some("t=1600000000,v0=invalid_signature"), 1600000000).unwrap_err().code(), "bad_signature");
        assert_eq!(el(Some("invalid_format"), 1600000000).unwrap_err().code(), "bad_signature");
        assert_eq!(el(None, 1600000000).unwrap_err().code(), "bad_signature");
        assert!(
            el(Some(&good.to_uppercase().replace("T=", "t=").replace("V0=", "v0=")), 1600000000).is_err(),
            "uppercase hex is skipped"
        );
        assert!(
            el(Some("t=1600000000, v0=f8a0d1dc33ee963cb54d2f31514555995e93313c9d2042c030adbb82b87fae13"), 1600000000)
                .is_err(),
            "no trimming"
        );
    }

    #[test]
    fn a_forged_stale_delivery_reads_bad_signature() {
        assert_eq!(
            el(Some("t=1,v0=f8a0d1dc33ee963cb54d2f31514555995e93313c9d2042c030adbb82b87fae13"), 1600000000)
                .unwrap_err()
                .code(),
            "bad_signature"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Per provider, through its rules
// ---------------------------------------------------------------------------------------

use super::outbound::FieldSource;
use super::ProviderDef;

/// The keys to try for one delivery.
#[derive(Debug)]
pub struct WebhookKeys<'a> {
    /// Candidate keys, current first.
    pub keys: Vec<&'a [u8]>,
    /// The credential holds an HMAC key rather than a shared secret, for providers that
    /// offer both (Vapi).
    pub hmac: bool,
}

impl<'a> WebhookKeys<'a> {
    /// The secret fields among `names` that the credential holds, in that order.
    pub fn from_fields(cred: &'a dyn FieldSource, names: &[&str], hmac: bool) -> Self {
        let keys = names.iter().filter_map(|n| cred.secret_field(n)).map(|s| s.expose().as_bytes()).collect();
        WebhookKeys { keys, hmac }
    }
}

impl ProviderDef {
    /// Whether this provider's deliveries can be verified at all.
    pub fn has_webhooks(&self) -> bool {
        self.rules().has_webhooks()
    }

    /// The webhook keys a stored credential holds (PROVIDERS.md §0), or `None` when it has
    /// none (`no_credential`).
    pub fn webhook_keys<'c>(&self, cred: &'c dyn FieldSource) -> Option<WebhookKeys<'c>> {
        self.rules().webhook_keys(cred)
    }

    /// Verifies a delivery with the given keys.
    pub fn verify_delivery(&self, d: &Delivery<'_>, k: &WebhookKeys<'_>) -> Result<Accepted, Reject> {
        self.rules().verify(d, k)
    }

    /// Route ids an (unverified) delivery names, for `/webhooks/{provider}` without a tenant.
    pub fn route_candidates(&self, d: &Delivery<'_>) -> Vec<(&'static str, String)> {
        self.rules().route_candidates(d)
    }

    /// In-body ids checked against the tenant after verification (§1.8).
    pub fn check_body_ids(&self, d: &Delivery<'_>, cred: &dyn FieldSource) -> Result<(), String> {
        self.rules().check_body_ids(d, cred)
    }

    /// JSON field names whose values are masked before forwarding (echoed secrets).
    pub fn echoed_secret_fields(&self) -> &'static [&'static str] {
        self.rules().echoed_secret_fields()
    }
}

//! Masking of secret byte strings inside bodies and headers that keyward passes on (a
//! provider error that echoes the key, a webhook payload that carries a token). Matches are
//! replaced by `*` of the same length, so lengths stay true.

use zeroize::Zeroizing;

/// Masks every occurrence of any pattern in `buf`, in place. Returns whether it did.
pub fn mask(buf: &mut [u8], patterns: &[Zeroizing<Vec<u8>>]) -> bool {
    let mut hit = false;
    for p in patterns {
        if p.is_empty() || p.len() > buf.len() {
            continue;
        }
        let search = Search::new(p, buf.len());
        let mut from = 0;
        while let Some(i) = buf.get(from..).and_then(|rest| search.find(rest)) {
            let at = from + i;
            if let Some(s) = buf.get_mut(at..at + p.len()) {
                s.fill(b'*');
            }
            hit = true;
            from = at + p.len();
        }
    }
    hit
}

/// Whether any pattern occurs in `buf`: lets a caller skip copying what it would not change.
pub fn contains_any(buf: &[u8], patterns: &[Zeroizing<Vec<u8>>]) -> bool {
    patterns.iter().any(|p| !p.is_empty() && p.len() <= buf.len() && Search::new(p, buf.len()).find(buf).is_some())
}

/// Up to this many bytes of haystack, a pattern is found by memchr of its first byte and a
/// comparison at each hit, instead of memchr's SIMD substring searcher: building that
/// searcher costs ~3,500 instructions per pattern (its two-way factorization and
/// prefilter), more than scanning a webhook body of a few KiB (docs/benchmarks.md). The
/// bound keeps the worst case (a haystack made of the pattern's first byte) at
/// `SCAN_MAX` short SIMD comparisons.
const SCAN_MAX: usize = 8 * 1024;

/// One pattern's search over haystacks of a known size.
#[allow(clippy::large_enum_variant)] // a local of one call: never stored, so boxing would only add an allocation
enum Search<'p> {
    Scan(&'p [u8]),
    Finder(memchr::memmem::Finder<'p>),
}

impl<'p> Search<'p> {
    /// For a non-empty `pattern` and haystacks of at most `len` bytes.
    fn new(pattern: &'p [u8], len: usize) -> Self {
        if len <= SCAN_MAX {
            Search::Scan(pattern)
        } else {
            Search::Finder(memchr::memmem::Finder::new(pattern))
        }
    }

    /// Offset of the first occurrence in `hay`.
    fn find(&self, hay: &[u8]) -> Option<usize> {
        match self {
            Search::Finder(f) => f.find(hay),
            Search::Scan(p) => {
                let (&first, _) = p.split_first()?;
                let last_start = hay.len().checked_sub(p.len())?;
                let starts = hay.get(..=last_start)?;
                memchr::memchr_iter(first, starts).find(|&i| hay[i..].starts_with(p))
            }
        }
    }
}

/// Whether `buf` ends with the start of some pattern (a proper prefix): only then can a
/// match span into the next chunk of a stream.
pub fn ends_with_partial(buf: &[u8], patterns: &[Zeroizing<Vec<u8>>]) -> bool {
    patterns.iter().any(|p| {
        let Some(&first) = p.first() else { return false };
        // Only where the tail holds the pattern's first byte can a prefix of it start: one
        // memchr pass instead of a comparison for every prefix length (every chunk).
        let tail = &buf[buf.len().saturating_sub(p.len() - 1)..];
        memchr::memchr_iter(first, tail).any(|i| p.starts_with(&tail[i..]))
    })
}

/// String values of the named JSON fields, anywhere in `body` (for masking echoed secrets).
pub fn json_field_values(body: &[u8], names: &[&str]) -> Vec<Zeroizing<Vec<u8>>> {
    fn walk(v: &serde_json::Value, names: &[&str], out: &mut Vec<Zeroizing<Vec<u8>>>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if let (true, Some(s)) = (names.contains(&k.as_str()), v.as_str()) {
                        if !s.is_empty() {
                            out.push(Zeroizing::new(s.as_bytes().to_vec()));
                        }
                    }
                    walk(v, names, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, names, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if names.is_empty() {
        return out;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        walk(&v, names, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_that_ends_with_the_start_of_a_pattern_is_partial() {
        let p = vec![Zeroizing::new(b"sk-123".to_vec())];
        assert!(ends_with_partial(b"key sk-", &p));
        assert!(ends_with_partial(b"s", &p));
        assert!(!ends_with_partial(b"key sk-123", &p), "a whole match is not a partial one");
        assert!(!ends_with_partial(b"key", &p));
        assert!(!ends_with_partial(b"", &p));
        assert!(contains_any(b"a sk-123 b", &p));
        assert!(!contains_any(b"a sk-12 b", &p));
    }

    /// Every word over a two-letter alphabet up to `max` letters (a repeated letter is where
    /// a first-byte scan could slip).
    fn words(max: usize) -> impl Iterator<Item = Vec<u8>> {
        (0..=max).flat_map(|len| (0..1usize << len).map(move |bits| (0..len).map(|i| b"ab"[bits >> i & 1]).collect()))
    }

    #[test]
    fn a_partial_match_is_any_proper_prefix_at_the_end_for_every_small_case() {
        // Every buffer and pattern up to these lengths, against the definition itself.
        for pat in words(4).filter(|p| !p.is_empty()) {
            let p = vec![Zeroizing::new(pat.clone())];
            for buf in words(6) {
                let defined = (1..pat.len()).any(|k| k <= buf.len() && buf.ends_with(&pat[..k]));
                assert_eq!(ends_with_partial(&buf, &p), defined, "{buf:?} {pat:?}");
            }
        }
    }

    #[test]
    fn the_short_scan_finds_what_the_substring_searcher_finds() {
        for pat in words(4).filter(|p| !p.is_empty()) {
            for hay in words(7) {
                let expected = memchr::memmem::find(&hay, &pat);
                assert_eq!(Search::Scan(&pat).find(&hay), expected, "{hay:?} {pat:?}");
                assert_eq!(Search::new(&pat, usize::MAX).find(&hay), expected);
            }
        }
        // Past the scan's bound the searcher is used, and finds the same.
        let mut long = vec![b'a'; SCAN_MAX + 10];
        long.extend_from_slice(b"sk-123");
        let p = vec![Zeroizing::new(b"sk-123".to_vec())];
        assert!(contains_any(&long, &p));
        assert!(mask(&mut long, &p));
        assert!(long.ends_with(b"******") && !contains_any(&long, &p));
    }

    #[test]
    fn echoed_fields_are_found_at_any_depth_and_masked() {
        let mut body =
            br#"{"message":{"phoneNumber":{"twilioAuthToken":"tok-123","number":"+1"},"list":[{"secret":"s-9"}]}}"#
                .to_vec();
        let vals = json_field_values(&body, &["twilioAuthToken", "secret"]);
        assert_eq!(vals.len(), 2);
        assert!(mask(&mut body, &vals));
        let s = String::from_utf8(body).unwrap();
        assert!(s.contains(r#""twilioAuthToken":"*******""#) && s.contains(r#""secret":"***""#), "{s}");
        assert!(s.contains(r#""number":"+1""#));
    }
}

//! What route discovery reads at a provider: listings of the ids a credential owns, and how
//! to read one page of each. The daemon makes the calls and bounds the pages; the provider
//! files say what to ask and how to read the answer.

/// One listing: the first page to GET and how to read each page.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Names the listing in error messages (`incoming numbers: HTTP 500`).
    pub label: String,
    /// The first page (path and query).
    pub first: String,
    /// Reads one page's body.
    pub read: fn(&[u8]) -> Result<Page, String>,
}

/// One page read: the ids found and the next page, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// `(route kind, id)` pairs.
    pub found: Vec<(&'static str, String)>,
    /// The next page (path and query).
    pub next: Option<String>,
}

//! Several coordinators, one leading: the list of URLs the CLI and the
//! agent take (`--coordinator A,B`), and the order they try them in when
//! one refuses as a standby or does not answer.

use super::{CoordinatorUrl, UrlError};

/// Why a list of coordinator URLs is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    /// Nothing at all, or only commas and spaces.
    #[error(
        "no coordinator URL given; give one as http(s)://HOST:PORT, or several separated by commas"
    )]
    Empty,
    /// Two commas with nothing between them, or one at an end.
    #[error("{0:?} has an empty entry (two commas in a row, or one at an end); separate URLs with one comma")]
    EmptyEntry(String),
    /// The one URL given is not a coordinator URL.
    #[error(transparent)]
    Url(UrlError),
    /// One entry of a longer list is not a coordinator URL.
    #[error("coordinator {position} of the list: {error}")]
    Entry {
        /// 1-based, as a person counts.
        position: usize,
        /// What is wrong with it.
        error: UrlError,
    },
    /// The same coordinator twice.
    #[error("{0:?} is named twice in the list of coordinators")]
    Duplicate(String),
}

/// One or more coordinator URLs, each checked, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorList {
    /// The URLs as written (trimmed), and what each names.
    entries: Vec<(String, CoordinatorUrl)>,
}

impl CoordinatorList {
    /// Parses `text`: one URL, or several separated by commas (spaces
    /// around the commas are allowed). A bad entry is named with its place.
    pub fn parse(text: &str) -> Result<Self, ListError> {
        if text.trim().is_empty() {
            return Err(ListError::Empty);
        }
        if !text.contains(',') {
            let raw = text.trim();
            let parsed = CoordinatorUrl::parse(raw).map_err(ListError::Url)?;
            return Ok(Self {
                entries: vec![(raw.to_owned(), parsed)],
            });
        }
        let mut entries: Vec<(String, CoordinatorUrl)> = Vec::new();
        for (i, raw) in text.split(',').enumerate() {
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(ListError::EmptyEntry(text.to_owned()));
            }
            let parsed = CoordinatorUrl::parse(raw).map_err(|error| ListError::Entry {
                position: i + 1,
                error,
            })?;
            if entries.iter().any(|(_, seen)| *seen == parsed) {
                return Err(ListError::Duplicate(raw.to_owned()));
            }
            entries.push((raw.to_owned(), parsed));
        }
        Ok(Self { entries })
    }

    /// The URLs, in order.
    pub fn urls(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(url, _)| url.as_str())
    }

    /// The URL at `index`.
    pub fn url(&self, index: usize) -> &str {
        &self.entries[index].0
    }

    /// What the URL at `index` names.
    pub fn parsed(&self, index: usize) -> &CoordinatorUrl {
        &self.entries[index].1
    }

    /// How many URLs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: a list holds at least one URL.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where `url` is in the list, comparing what the URLs name (scheme,
    /// host, port), so `https://c:7700/` finds `https://c:7700`.
    pub fn position(&self, url: &str) -> Option<usize> {
        let wanted = CoordinatorUrl::parse(url).ok()?;
        self.entries
            .iter()
            .position(|(_, parsed)| *parsed == wanted)
    }

    /// Whether every URL of `other` is in this list: what a token saved
    /// for this list may be sent to.
    pub fn covers(&self, other: &CoordinatorList) -> bool {
        other
            .entries
            .iter()
            .all(|(_, url)| self.entries.iter().any(|(_, mine)| mine == url))
    }

    /// Adds `url` at the end unless it is there; returns its index, or
    /// `None` if it is not a coordinator URL, or is plain http:// while the
    /// list uses https:// (a leader named by a standby never lowers what
    /// the connection checks).
    pub fn learn(&mut self, url: &str) -> Option<usize> {
        if let Some(index) = self.position(url) {
            return Some(index);
        }
        let parsed = CoordinatorUrl::parse(url).ok()?;
        if !parsed.tls && self.entries.iter().any(|(_, known)| known.tls) {
            return None;
        }
        self.entries.push((url.to_owned(), parsed));
        Some(self.entries.len() - 1)
    }

    /// The list as it is written: URLs joined by commas.
    pub fn to_text(&self) -> String {
        self.urls().collect::<Vec<_>>().join(",")
    }
}

impl std::fmt::Display for CoordinatorList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// One pass over the list in search of the leader: each coordinator is
/// tried at most once, starting with the one that answered last, and a
/// leader named by a standby's refusal goes before the rest.
#[derive(Debug, Clone)]
pub struct Round {
    /// Which indices were tried in this pass.
    tried: Vec<bool>,
    /// Where the plain walk through the list goes on from.
    cursor: usize,
}

impl Round {
    /// A pass over `len` coordinators beginning with `first` (the one that
    /// answered last; 0 when none has).
    pub fn new(len: usize, first: usize) -> Self {
        Self {
            tried: vec![false; len],
            cursor: if first < len { first } else { 0 },
        }
    }

    /// The next coordinator to try: `leader` (a standby just named it) if
    /// it has not been tried in this pass, else the next untried one in list
    /// order; `None` once every one has been tried, when the caller backs
    /// off before a new pass. An index past the list's end (a leader
    /// learned since the pass began) is tried like any other.
    pub fn next(&mut self, leader: Option<usize>) -> Option<usize> {
        if let Some(leader) = leader {
            if leader >= self.tried.len() {
                self.tried.resize(leader + 1, false);
            }
            if !self.tried[leader] {
                self.tried[leader] = true;
                return Some(leader);
            }
        }
        let len = self.tried.len();
        for step in 0..len {
            let index = (self.cursor + step) % len;
            if !self.tried[index] {
                self.tried[index] = true;
                self.cursor = (index + 1) % len;
                return Some(index);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_several_separated_by_commas() {
        let one = CoordinatorList::parse("http://127.0.0.1:7700").unwrap();
        assert_eq!(one.urls().collect::<Vec<_>>(), ["http://127.0.0.1:7700"]);
        let three = CoordinatorList::parse("https://a:7000, https://b:7000 ,https://c").unwrap();
        assert_eq!(
            three.urls().collect::<Vec<_>>(),
            ["https://a:7000", "https://b:7000", "https://c"]
        );
        assert_eq!(three.to_text(), "https://a:7000,https://b:7000,https://c");
        assert_eq!(three.parsed(2).port, 7700);
    }

    #[test]
    fn a_bad_entry_is_named_with_its_place_and_why() {
        let err = CoordinatorList::parse("https://a:7000,b.example:7000").unwrap_err();
        assert_eq!(
            err,
            ListError::Entry {
                position: 2,
                error: UrlError::Scheme("b.example:7000".into())
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("coordinator 2 of the list") && text.contains("\"b.example:7000\""),
            "{text}"
        );
        assert_eq!(
            CoordinatorList::parse("https://a,,https://b"),
            Err(ListError::EmptyEntry("https://a,,https://b".into()))
        );
        assert_eq!(
            CoordinatorList::parse("https://a,"),
            Err(ListError::EmptyEntry("https://a,".into()))
        );
        assert_eq!(CoordinatorList::parse(" "), Err(ListError::Empty));
        // One URL alone is refused as before lists existed.
        assert_eq!(
            CoordinatorList::parse("ftp://a"),
            Err(ListError::Url(UrlError::Scheme("ftp://a".into())))
        );
        assert_eq!(
            CoordinatorList::parse("https://a:7700,https://a/"),
            Err(ListError::Duplicate("https://a/".into()))
        );
    }

    #[test]
    fn positions_compare_what_urls_name_and_lists_cover_their_parts() {
        let list = CoordinatorList::parse("https://a:7000,https://b").unwrap();
        assert_eq!(list.position("https://b:7700/"), Some(1));
        assert_eq!(list.position("http://b:7700"), None, "another scheme");
        assert_eq!(list.position("junk"), None);
        assert!(list.covers(&CoordinatorList::parse("https://b:7700").unwrap()));
        assert!(!list.covers(&CoordinatorList::parse("https://b,https://evil").unwrap()));
        let mut learning = list.clone();
        assert_eq!(learning.learn("https://a:7000/"), Some(0));
        assert_eq!(learning.learn("https://c:7000"), Some(2));
        assert_eq!(learning.learn("file:///x"), None);
        assert_eq!(
            learning.learn("http://d:7000"),
            None,
            "no step down from https"
        );
        assert_eq!(learning.len(), 3);
    }

    fn walk(round: &mut Round, hints: &[Option<usize>]) -> Vec<Option<usize>> {
        hints.iter().map(|hint| round.next(*hint)).collect()
    }

    #[test]
    fn a_round_starts_with_the_last_good_one_and_tries_each_once() {
        let mut round = Round::new(3, 1);
        assert_eq!(
            walk(&mut round, &[None, None, None, None]),
            [Some(1), Some(2), Some(0), None]
        );
        // A start past the end (the list shrank) begins at the first.
        assert_eq!(Round::new(2, 5).next(None), Some(0));
    }

    #[test]
    fn a_named_leader_goes_first_and_is_not_tried_twice() {
        let mut round = Round::new(3, 0);
        // 0 refuses naming 2: 2 next, then the walk goes on with 1.
        assert_eq!(
            walk(&mut round, &[None, Some(2), None, None]),
            [Some(0), Some(2), Some(1), None]
        );
        // Two standbys naming each other do not loop.
        let mut round = Round::new(2, 0);
        assert_eq!(
            walk(&mut round, &[None, Some(1), Some(0)]),
            [Some(0), Some(1), None]
        );
        // A leader learned after the round began (index 3 of a 3-list).
        let mut round = Round::new(3, 0);
        assert_eq!(
            walk(&mut round, &[None, Some(3), None, None, None]),
            [Some(0), Some(3), Some(1), Some(2), None]
        );
    }
}

//! Records keyed by trust domain that are listed in creation order (bundles and federation
//! relationships, as SPIRE lists them: by the row id the database gave them on insert).
//!
//! Every record carries a creation number. A new record gets one more than the highest
//! number held now (1 in an empty map), so the number follows from the state alone: every
//! replica, and a replica rebuilt from disk or from a snapshot, numbers the same record
//! the same way. Replacing a record keeps its number; a record deleted and created again
//! is new and goes last. Records written before numbers were kept load with number 0 and
//! sort first, by trust domain.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ward_core::TrustDomain;

use crate::query::{Page, PageRequest};

/// A map from trust domain to record that also keeps each record's creation number.
#[derive(Debug)]
pub(crate) struct Ordered<V> {
    items: BTreeMap<TrustDomain, (u64, Arc<V>)>,
    order: BTreeSet<(u64, TrustDomain)>,
}

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Self { items: BTreeMap::new(), order: BTreeSet::new() }
    }
}

impl<V> Ordered<V> {
    /// The record of `td`.
    pub(crate) fn get(&self, td: &TrustDomain) -> Option<&Arc<V>> {
        self.items.get(td).map(|(_, v)| v)
    }

    /// Whether `td` has a record.
    pub(crate) fn contains_key(&self, td: &TrustDomain) -> bool {
        self.items.contains_key(td)
    }

    /// The creation number of `td`'s record.
    pub(crate) fn number_of(&self, td: &TrustDomain) -> Option<u64> {
        self.items.get(td).map(|(n, _)| *n)
    }

    /// The number a record created now gets.
    fn next_number(&self) -> u64 {
        self.order.last().map_or(1, |(n, _)| n.saturating_add(1))
    }

    /// Stores `v` for `td`: a replaced record keeps its number, a new one gets the next.
    /// Returns the record's number.
    pub(crate) fn insert(&mut self, td: TrustDomain, v: Arc<V>) -> u64 {
        let number = self.number_of(&td).unwrap_or_else(|| self.next_number());
        self.insert_numbered(td, v, number);
        number
    }

    /// Stores `v` for `td` with creation number `number` (loading stored records).
    pub(crate) fn insert_numbered(&mut self, td: TrustDomain, v: Arc<V>, number: u64) {
        if let Some((old, _)) = self.items.insert(td.clone(), (number, v)) {
            self.order.remove(&(old, td.clone()));
        }
        self.order.insert((number, td));
    }

    /// Removes `td`'s record.
    pub(crate) fn remove(&mut self, td: &TrustDomain) -> Option<Arc<V>> {
        let (number, v) = self.items.remove(td)?;
        self.order.remove(&(number, td.clone()));
        Some(v)
    }

    /// Number of records.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Records with their numbers, in creation order.
    pub(crate) fn numbered(&self) -> impl Iterator<Item = (u64, &Arc<V>)> + '_ {
        self.order.iter().filter_map(|(n, td)| self.items.get(td).map(|(_, v)| (*n, v)))
    }

    /// Records in creation order.
    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<V>> + '_ {
        self.numbered().map(|(_, v)| v)
    }

    /// One page in creation order. The token is the creation number of the page's last
    /// record (as SPIRE's is the last row id); a token that is not a number yields an empty
    /// page (the server refuses such tokens before asking).
    pub(crate) fn page(&self, page: &PageRequest) -> Page<Arc<V>> {
        let after = match page.token.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => match t.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return Page { items: Vec::new(), next_token: None },
            },
        };
        let size = if page.size == 0 { usize::MAX } else { page.size };
        let mut items: Vec<(u64, &Arc<V>)> = self
            .numbered()
            .filter(|(n, _)| after.is_none_or(|a| *n > a))
            .take(size.saturating_add(1))
            .collect();
        let more = items.len() > size;
        items.truncate(size);
        let next_token = if more { items.last().map(|(n, _)| n.to_string()) } else { None };
        Page { items: items.into_iter().map(|(_, v)| Arc::clone(v)).collect(), next_token }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn lists_in_creation_order_and_replacing_keeps_the_place() {
        let mut m: Ordered<&str> = Ordered::default();
        assert_eq!(m.insert(td("zeta.org"), Arc::new("z")), 1);
        assert_eq!(m.insert(td("alpha.org"), Arc::new("a")), 2);
        assert_eq!(m.insert(td("zeta.org"), Arc::new("z2")), 1);
        let got: Vec<&str> = m.values().map(|v| **v).collect();
        assert_eq!(got, ["z2", "a"]);

        // Deleted and created again: last.
        m.remove(&td("zeta.org"));
        assert_eq!(m.insert(td("zeta.org"), Arc::new("z3")), 3);
        let got: Vec<&str> = m.values().map(|v| **v).collect();
        assert_eq!(got, ["a", "z3"]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn pages_resume_after_the_token_number() {
        let mut m: Ordered<u8> = Ordered::default();
        for (i, name) in ["c.org", "a.org", "b.org"].into_iter().enumerate() {
            m.insert(td(name), Arc::new(u8::try_from(i).unwrap()));
        }
        let p = m.page(&PageRequest::first(2));
        assert_eq!(p.items.iter().map(|v| **v).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(p.next_token.as_deref(), Some("2"));
        let p = m.page(&PageRequest { token: p.next_token, size: 2 });
        assert_eq!(p.items.iter().map(|v| **v).collect::<Vec<_>>(), [2]);
        assert_eq!(p.next_token, None);
        let p = m.page(&PageRequest { token: Some("x".into()), size: 2 });
        assert!(p.items.is_empty());
    }

    #[test]
    fn unnumbered_records_sort_first_by_name() {
        let mut m: Ordered<u8> = Ordered::default();
        m.insert_numbered(td("b.org"), Arc::new(1), 0);
        m.insert_numbered(td("a.org"), Arc::new(0), 0);
        assert_eq!(m.insert(td("c.org"), Arc::new(2)), 1);
        assert_eq!(m.values().map(|v| **v).collect::<Vec<_>>(), [0, 1, 2]);
    }
}

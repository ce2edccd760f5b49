//! A partial change to a registration entry (SPIRE's BatchUpdateEntry with an input mask).

use serde::{Deserialize, Serialize};

use crate::entry::{
    EntryError, RegistrationEntry, check_dns_names, check_hint, check_jwt_svid_ttl,
    check_parent_id, check_selectors, check_spiffe_id, check_x509_svid_ttl,
};
use crate::selector::SelectorSet;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The fields an update replaces, each `Some` with its new value; `None` keeps the stored one.
///
/// It is built once from the wire entry and its input mask, and applied once, to the stored
/// entry, where the write is decided, so an update never merges against a copy read earlier.
/// The id, `revision_number` and `created_at` are not here: the server owns them.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct EntryPatch {
    /// New `spiffe_id`.
    pub spiffe_id: Option<SpiffeId>,
    /// New `parent_id`.
    pub parent_id: Option<SpiffeId>,
    /// New `selectors`.
    pub selectors: Option<SelectorSet>,
    /// New `x509_svid_ttl`.
    pub x509_svid_ttl: Option<i32>,
    /// New `jwt_svid_ttl`.
    pub jwt_svid_ttl: Option<i32>,
    /// New `federates_with`.
    pub federates_with: Option<Vec<TrustDomain>>,
    /// New `admin`.
    pub admin: Option<bool>,
    /// New `downstream`.
    pub downstream: Option<bool>,
    /// New `expires_at`.
    pub expires_at: Option<i64>,
    /// New `dns_names`.
    pub dns_names: Option<Vec<String>>,
    /// New `store_svid`.
    pub store_svid: Option<bool>,
    /// New `hint`.
    pub hint: Option<String>,
}

impl EntryPatch {
    /// A patch that replaces every field with `e`'s (an update without an input mask).
    pub fn all_of(e: &RegistrationEntry) -> Self {
        Self {
            spiffe_id: Some(e.spiffe_id.clone()),
            parent_id: Some(e.parent_id.clone()),
            selectors: Some(e.selectors.clone()),
            x509_svid_ttl: Some(e.x509_svid_ttl),
            jwt_svid_ttl: Some(e.jwt_svid_ttl),
            federates_with: Some(e.federates_with.clone()),
            admin: Some(e.admin),
            downstream: Some(e.downstream),
            expires_at: Some(e.expires_at),
            dns_names: Some(e.dns_names.clone()),
            store_svid: Some(e.store_svid),
            hint: Some(e.hint.clone()),
        }
    }

    /// Checks the fields the patch sets against SPIRE's rules for trust domain `td`, in the
    /// order SPIRE checks an update. The rule that spans fields (selector types under
    /// `store_svid`) needs the stored entry: see [`RegistrationEntry::check_store_svid`].
    ///
    /// # Errors
    /// The first [`EntryError`] found.
    pub fn validate(&self, td: &TrustDomain) -> Result<(), EntryError> {
        fn check<T: ?Sized>(
            value: Option<&T>,
            rule: impl FnOnce(&T) -> Result<(), EntryError>,
        ) -> Result<(), EntryError> {
            value.map_or(Ok(()), rule)
        }
        check(self.parent_id.as_ref(), |id| check_parent_id(id, td))?;
        check(self.spiffe_id.as_ref(), |id| check_spiffe_id(id, td))?;
        check(self.dns_names.as_deref(), check_dns_names)?;
        check(self.selectors.as_ref(), check_selectors)?;
        check(self.hint.as_deref(), check_hint)?;
        check(self.x509_svid_ttl.as_ref(), |t| check_x509_svid_ttl(*t))?;
        check(self.jwt_svid_ttl.as_ref(), |t| check_jwt_svid_ttl(*t))
    }
}

impl RegistrationEntry {
    /// Replaces the fields `patch` sets and keeps the others. The id, `revision_number` and
    /// `created_at` are left alone.
    pub fn apply_patch(&mut self, patch: &EntryPatch) {
        fn set<T: Clone>(field: &mut T, new: Option<&T>) {
            if let Some(v) = new {
                field.clone_from(v);
            }
        }
        set(&mut self.spiffe_id, patch.spiffe_id.as_ref());
        set(&mut self.parent_id, patch.parent_id.as_ref());
        set(&mut self.selectors, patch.selectors.as_ref());
        set(&mut self.x509_svid_ttl, patch.x509_svid_ttl.as_ref());
        set(&mut self.jwt_svid_ttl, patch.jwt_svid_ttl.as_ref());
        set(&mut self.federates_with, patch.federates_with.as_ref());
        set(&mut self.admin, patch.admin.as_ref());
        set(&mut self.downstream, patch.downstream.as_ref());
        set(&mut self.expires_at, patch.expires_at.as_ref());
        set(&mut self.dns_names, patch.dns_names.as_ref());
        set(&mut self.store_svid, patch.store_svid.as_ref());
        set(&mut self.hint, patch.hint.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryId;
    use crate::selector::Selector;

    fn entry() -> RegistrationEntry {
        RegistrationEntry {
            hint: "old".into(),
            x509_svid_ttl: 60,
            revision_number: 4,
            created_at: 10,
            dns_names: vec!["b.example.org".into(), "a.example.org".into()],
            ..RegistrationEntry::new(
                EntryId::new("e1").unwrap(),
                SpiffeId::parse("spiffe://example.org/web").unwrap(),
                SpiffeId::parse("spiffe://example.org/spire/agent/x").unwrap(),
                SelectorSet::new(vec![Selector::parse("unix:uid:0").unwrap()]),
            )
        }
    }

    #[test]
    fn patch_replaces_only_the_fields_it_sets() {
        let mut e = entry();
        let patch = EntryPatch {
            hint: Some("new".into()),
            admin: Some(true),
            dns_names: Some(vec!["z.example.org".into(), "c.example.org".into()]),
            ..EntryPatch::default()
        };
        e.apply_patch(&patch);
        assert_eq!(e.hint, "new");
        assert!(e.admin);
        assert_eq!(e.dns_names, vec!["z.example.org", "c.example.org"], "caller's order kept");
        assert_eq!(e.x509_svid_ttl, 60);
        assert_eq!((e.revision_number, e.created_at), (4, 10));
    }

    #[test]
    fn validation_covers_only_the_fields_set() {
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(EntryPatch::default().validate(&td), Ok(()));
        let reserved = SpiffeId::parse("spiffe://example.org/spire/x").unwrap();
        let patch = EntryPatch {
            spiffe_id: Some(reserved.clone()),
            x509_svid_ttl: Some(-1),
            ..EntryPatch::default()
        };
        assert_eq!(
            patch.validate(&td),
            Err(EntryError::SpiffeId(crate::IdPolicyError::WorkloadPathReserved(
                reserved,
                td.clone()
            )))
        );
        let patch = EntryPatch { x509_svid_ttl: Some(-1), ..EntryPatch::default() };
        assert_eq!(patch.validate(&td), Err(EntryError::NegativeX509SvidTtl));
        let patch = EntryPatch { selectors: Some(SelectorSet::default()), ..EntryPatch::default() };
        assert_eq!(patch.validate(&td), Err(EntryError::NoSelectors));
        assert_eq!(EntryPatch::all_of(&entry()).validate(&td), Ok(()));
    }

    #[test]
    fn patch_of_every_field_makes_the_entry_equal_apart_from_server_fields() {
        let mut target = entry();
        target.spiffe_id = SpiffeId::parse("spiffe://example.org/other").unwrap();
        target.store_svid = true;
        target.expires_at = 99;
        target.revision_number = 1;
        let mut e = entry();
        e.apply_patch(&EntryPatch::all_of(&target));
        target.revision_number = e.revision_number;
        assert_eq!(e, target);
        assert_eq!(EntryPatch::default(), EntryPatch::default());
        let mut unchanged = entry();
        unchanged.apply_patch(&EntryPatch::default());
        assert_eq!(unchanged, entry());
    }
}

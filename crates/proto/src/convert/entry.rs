//! `spire.api.types.Entry` <-> [`RegistrationEntry`], and a wire entry with its input mask
//! -> [`EntryPatch`].

use ward_core::{EntryId, EntryPatch, RegistrationEntry, TrustDomain};

use super::error::{ConvertError, IdField};
use super::selector::{selectors_from_proto, selectors_to_proto};
use super::spiffe_id::{spiffe_id_from_proto, spiffe_id_to_proto};
use crate::spire::api::server::entry::v1::EntryRevision;
use crate::spire::api::types;

/// Parses a wire entry as sent to BatchCreateEntry (every field is read) under the id `id`.
///
/// The caller decides the id: SPIRE checks the wire id only after the entry's other rules,
/// so it is parsed apart (with [`EntryId::new`]). `revision_number` and `created_at` are
/// copied as sent; the server decides their stored values. Policy checks that need the
/// server's trust domain are [`RegistrationEntry::validate`]'s job.
///
/// Selectors become a set, so a selector given twice is kept once: callers that must refuse
/// repeats check the wire entry with [`repeated_field`].
///
/// # Errors
/// The first [`ConvertError`], checked in SPIRE's order: parent ID, SPIFFE ID, federated
/// trust domains, selectors (at least one).
pub fn entry_from_proto(
    proto: &types::Entry,
    id: EntryId,
) -> Result<RegistrationEntry, ConvertError> {
    let parent_id = spiffe_id_from_proto(proto.parent_id.as_ref(), IdField::ParentId)?;
    let spiffe_id = spiffe_id_from_proto(proto.spiffe_id.as_ref(), IdField::SpiffeId)?;
    let federates_with = federates_with_from_proto(&proto.federates_with)?;
    let selectors = required_selectors(&proto.selectors)?;
    Ok(RegistrationEntry {
        id,
        spiffe_id,
        parent_id,
        selectors,
        x509_svid_ttl: proto.x509_svid_ttl,
        jwt_svid_ttl: proto.jwt_svid_ttl,
        federates_with,
        admin: proto.admin,
        downstream: proto.downstream,
        expires_at: proto.expires_at,
        dns_names: proto.dns_names.clone(),
        revision_number: proto.revision_number,
        store_svid: proto.store_svid,
        hint: proto.hint.clone(),
        created_at: proto.created_at,
    })
}

/// Parses a BatchUpdateEntry item into the patch it asks for: every field the input mask
/// selects (all of them when `input_mask` is `None`) is read from `proto`, the rest left
/// out. The id, `revision_number` and `created_at` are never part of it: the server owns
/// them (it bumps the revision on every update).
///
/// # Errors
/// The first [`ConvertError`] among the selected fields, in SPIRE's order: parent ID,
/// SPIFFE ID, federated trust domains, selectors (at least one).
pub fn entry_patch_from_proto(
    proto: &types::Entry,
    input_mask: Option<&types::EntryMask>,
) -> Result<EntryPatch, ConvertError> {
    let all = entry_mask_all();
    let m = input_mask.unwrap_or(&all);
    Ok(EntryPatch {
        parent_id: m
            .parent_id
            .then(|| spiffe_id_from_proto(proto.parent_id.as_ref(), IdField::ParentId))
            .transpose()?,
        spiffe_id: m
            .spiffe_id
            .then(|| spiffe_id_from_proto(proto.spiffe_id.as_ref(), IdField::SpiffeId))
            .transpose()?,
        federates_with: m
            .federates_with
            .then(|| federates_with_from_proto(&proto.federates_with))
            .transpose()?,
        selectors: m.selectors.then(|| required_selectors(&proto.selectors)).transpose()?,
        x509_svid_ttl: m.x509_svid_ttl.then_some(proto.x509_svid_ttl),
        jwt_svid_ttl: m.jwt_svid_ttl.then_some(proto.jwt_svid_ttl),
        admin: m.admin.then_some(proto.admin),
        downstream: m.downstream.then_some(proto.downstream),
        expires_at: m.expires_at.then_some(proto.expires_at),
        dns_names: m.dns_names.then(|| proto.dns_names.clone()),
        store_svid: m.store_svid.then_some(proto.store_svid),
        hint: m.hint.then(|| proto.hint.clone()),
    })
}

/// A list field of a wire entry that holds the same item twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepeatedField {
    /// A selector (same type and value) appears twice.
    Selectors,
    /// A DNS name appears twice.
    DnsNames,
}

/// The first list field of `proto` that the input mask selects (all when `None`) and that
/// holds an item twice, selectors before DNS names as SPIRE stores them. SPIRE's datastore
/// refuses such an entry where a set would quietly drop the repeat.
pub fn repeated_field(
    proto: &types::Entry,
    input_mask: Option<&types::EntryMask>,
) -> Option<RepeatedField> {
    fn repeats<T: Ord>(items: impl Iterator<Item = T>) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        !items.into_iter().all(|i| seen.insert(i))
    }
    let selectors = input_mask.is_none_or(|m| m.selectors);
    let dns_names = input_mask.is_none_or(|m| m.dns_names);
    if selectors && repeats(proto.selectors.iter().map(|s| (&s.r#type, &s.value))) {
        return Some(RepeatedField::Selectors);
    }
    if dns_names && repeats(proto.dns_names.iter()) {
        return Some(RepeatedField::DnsNames);
    }
    None
}

/// Renders an entry, keeping only the fields `mask` selects (all when `None`); the id is
/// always present.
pub fn entry_to_proto(entry: &RegistrationEntry, mask: Option<&types::EntryMask>) -> types::Entry {
    let all = entry_mask_all();
    let m = mask.unwrap_or(&all);
    types::Entry {
        id: entry.id.as_str().to_owned(),
        spiffe_id: m.spiffe_id.then(|| spiffe_id_to_proto(&entry.spiffe_id)),
        parent_id: m.parent_id.then(|| spiffe_id_to_proto(&entry.parent_id)),
        selectors: if m.selectors { selectors_to_proto(&entry.selectors) } else { Vec::new() },
        x509_svid_ttl: if m.x509_svid_ttl { entry.x509_svid_ttl } else { 0 },
        federates_with: if m.federates_with {
            entry.federates_with.iter().map(|td| td.as_str().to_owned()).collect()
        } else {
            Vec::new()
        },
        admin: m.admin && entry.admin,
        downstream: m.downstream && entry.downstream,
        expires_at: if m.expires_at { entry.expires_at } else { 0 },
        dns_names: if m.dns_names { entry.dns_names.clone() } else { Vec::new() },
        revision_number: if m.revision_number { entry.revision_number } else { 0 },
        store_svid: m.store_svid && entry.store_svid,
        jwt_svid_ttl: if m.jwt_svid_ttl { entry.jwt_svid_ttl } else { 0 },
        hint: if m.hint { entry.hint.clone() } else { String::new() },
        created_at: if m.created_at { entry.created_at } else { 0 },
    }
}

/// The revision record SyncAuthorizedEntries sends for an entry.
pub fn entry_revision_to_proto(entry: &RegistrationEntry) -> EntryRevision {
    EntryRevision {
        id: entry.id.as_str().to_owned(),
        revision_number: entry.revision_number,
        created_at: entry.created_at,
    }
}

/// A mask selecting every entry field.
pub fn entry_mask_all() -> types::EntryMask {
    types::EntryMask {
        spiffe_id: true,
        parent_id: true,
        selectors: true,
        x509_svid_ttl: true,
        federates_with: true,
        admin: true,
        downstream: true,
        expires_at: true,
        dns_names: true,
        revision_number: true,
        store_svid: true,
        jwt_svid_ttl: true,
        hint: true,
        created_at: true,
    }
}

fn federates_with_from_proto(names: &[String]) -> Result<Vec<TrustDomain>, ConvertError> {
    names
        .iter()
        .map(|n| TrustDomain::parse(n).map_err(ConvertError::InvalidFederatedTrustDomain))
        .collect()
}

fn required_selectors(list: &[types::Selector]) -> Result<ward_core::SelectorSet, ConvertError> {
    if list.is_empty() {
        return Err(ConvertError::NoSelectors);
    }
    selectors_from_proto(list)
}

#[cfg(test)]
mod tests {
    use ward_core::{SelectorSet, SpiffeIdError};

    use super::*;

    fn wire_id(td: &str, path: &str) -> Option<types::Spiffeid> {
        Some(types::Spiffeid { trust_domain: td.into(), path: path.into() })
    }

    fn full_wire_entry() -> types::Entry {
        types::Entry {
            id: "entry-1".into(),
            spiffe_id: wire_id("example.org", "/web"),
            parent_id: wire_id("example.org", "/spire/agent/join_token/abc"),
            selectors: vec![
                types::Selector { r#type: "unix".into(), value: "uid:1000".into() },
                types::Selector { r#type: "unix".into(), value: "gid:0".into() },
            ],
            x509_svid_ttl: 3600,
            federates_with: vec!["other.org".into(), "spiffe://third.org".into()],
            admin: true,
            downstream: true,
            expires_at: 1_900_000_000,
            dns_names: vec!["web.example.org".into()],
            revision_number: 7,
            store_svid: true,
            jwt_svid_ttl: 300,
            hint: "web".into(),
            created_at: 1_700_000_000,
        }
    }

    fn id() -> EntryId {
        EntryId::new("entry-1").unwrap()
    }

    #[test]
    fn full_entry_round_trips_with_nil_mask() {
        let wire = full_wire_entry();
        let entry = entry_from_proto(&wire, id()).unwrap();
        assert_eq!(entry.id.as_str(), "entry-1");
        assert_eq!(entry.spiffe_id.as_str(), "spiffe://example.org/web");
        assert_eq!(entry.federates_with[1].as_str(), "third.org");
        assert_eq!(entry.selectors.len(), 2);
        let back = entry_to_proto(&entry, None);
        let mut want = wire;
        // Selectors come back sorted and trust domains as bare names.
        want.selectors.reverse();
        want.federates_with[1] = "third.org".into();
        assert_eq!(back, want);
    }

    #[test]
    fn id_comes_from_the_caller() {
        let mut wire = full_wire_entry();
        wire.id = "not/an/entry/id".into();
        let entry = entry_from_proto(&wire, EntryId::new("assigned").unwrap()).unwrap();
        assert_eq!(entry.id.as_str(), "assigned");
    }

    #[test]
    fn repeated_selectors_and_dns_names_are_found_where_masked() {
        let mut wire = full_wire_entry();
        assert_eq!(repeated_field(&wire, None), None);
        wire.dns_names = vec!["a.example.org".into(), "a.example.org".into()];
        assert_eq!(repeated_field(&wire, None), Some(RepeatedField::DnsNames));
        wire.selectors.push(wire.selectors[0].clone());
        assert_eq!(repeated_field(&wire, None), Some(RepeatedField::Selectors));
        let only_dns = types::EntryMask { dns_names: true, ..Default::default() };
        assert_eq!(repeated_field(&wire, Some(&only_dns)), Some(RepeatedField::DnsNames));
        assert_eq!(repeated_field(&wire, Some(&types::EntryMask::default())), None);
        // Same value under another type is not a repeat.
        let mut wire = full_wire_entry();
        wire.selectors = vec![
            types::Selector { r#type: "unix".into(), value: "uid:1".into() },
            types::Selector { r#type: "k8s".into(), value: "uid:1".into() },
        ];
        assert_eq!(repeated_field(&wire, None), None);
    }

    #[test]
    fn rejects_in_spire_order_with_spire_texts() {
        let mut wire = full_wire_entry();
        wire.parent_id = None;
        wire.spiffe_id = None;
        let err = entry_from_proto(&wire, id()).unwrap_err();
        assert_eq!(err, ConvertError::MissingId(IdField::ParentId));
        assert_eq!(err.to_string(), "invalid parent ID: request must specify SPIFFE ID");

        let mut wire = full_wire_entry();
        wire.spiffe_id = wire_id("example.org", "/a//b");
        let err = entry_from_proto(&wire, id()).unwrap_err();
        assert_eq!(err, ConvertError::InvalidId(IdField::SpiffeId, SpiffeIdError::EmptySegment));
        assert_eq!(err.to_string(), "invalid spiffe ID: path cannot contain empty segments");

        let mut wire = full_wire_entry();
        wire.federates_with = vec!["Bad".into()];
        assert_eq!(
            entry_from_proto(&wire, id()).unwrap_err(),
            ConvertError::InvalidFederatedTrustDomain(SpiffeIdError::BadTrustDomainChar)
        );

        let mut wire = full_wire_entry();
        wire.selectors.clear();
        let err = entry_from_proto(&wire, id()).unwrap_err();
        assert_eq!(err, ConvertError::NoSelectors);
        assert_eq!(err.to_string(), "selector list is empty");
    }

    #[test]
    fn output_mask_keeps_only_selected_fields_and_always_the_id() {
        let entry = entry_from_proto(&full_wire_entry(), id()).unwrap();
        let mask = types::EntryMask {
            spiffe_id: true,
            selectors: true,
            revision_number: true,
            created_at: true,
            ..Default::default()
        };
        let out = entry_to_proto(&entry, Some(&mask));
        assert_eq!(out.id, "entry-1");
        assert_eq!(out.spiffe_id, wire_id("example.org", "/web"));
        assert_eq!(out.selectors.len(), 2);
        assert_eq!(out.revision_number, 7);
        assert_eq!(out.created_at, 1_700_000_000);
        assert_eq!(out.parent_id, None);
        assert!(out.federates_with.is_empty() && out.dns_names.is_empty());
        assert!(!out.admin && !out.downstream && !out.store_svid);
        assert_eq!((out.x509_svid_ttl, out.jwt_svid_ttl, out.expires_at), (0, 0, 0));
        assert_eq!(out.hint, "");

        let empty = entry_to_proto(&entry, Some(&types::EntryMask::default()));
        assert_eq!(empty, types::Entry { id: "entry-1".into(), ..Default::default() });
    }

    #[test]
    fn patch_holds_only_masked_fields() {
        let existing = entry_from_proto(&full_wire_entry(), id()).unwrap();
        let wire = types::Entry {
            hint: "new".into(),
            x509_svid_ttl: 60,
            selectors: vec![types::Selector { r#type: "k8s".into(), value: "ns:a".into() }],
            ..Default::default()
        };
        let mask = types::EntryMask { hint: true, selectors: true, ..Default::default() };
        let patch = entry_patch_from_proto(&wire, Some(&mask)).unwrap();
        assert_eq!(
            patch,
            EntryPatch {
                hint: Some("new".into()),
                selectors: Some(SelectorSet::new(vec!["k8s:ns:a".parse().unwrap()])),
                ..EntryPatch::default()
            }
        );
        let mut updated = existing.clone();
        updated.apply_patch(&patch);
        assert_eq!(updated.x509_svid_ttl, 3600, "unmasked field kept");
        assert_eq!(updated.spiffe_id, existing.spiffe_id);

        // A nil mask means every field: the wire entry's missing parent ID is then an error.
        assert_eq!(
            entry_patch_from_proto(&wire, None).unwrap_err(),
            ConvertError::MissingId(IdField::ParentId)
        );
        // Every field, and never the server-owned ones.
        let mut full = full_wire_entry();
        full.revision_number = 99;
        full.created_at = 1;
        let mut updated = existing.clone();
        updated.apply_patch(&entry_patch_from_proto(&full, None).unwrap());
        assert_eq!(updated, existing);
        // An empty mask changes nothing.
        let none = entry_patch_from_proto(&full, Some(&types::EntryMask::default())).unwrap();
        assert_eq!(none, EntryPatch::default());
    }

    #[test]
    fn revision_record_carries_id_revision_and_creation() {
        let entry = entry_from_proto(&full_wire_entry(), id()).unwrap();
        assert_eq!(
            entry_revision_to_proto(&entry),
            EntryRevision { id: "entry-1".into(), revision_number: 7, created_at: 1_700_000_000 }
        );
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ward_store::testdata::DataSet;
use ward_store::{Store, StoreConfig};

#[test]
fn small_set_authorizes_fifteen_entries_per_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::new(DataSet::trust_domain())).unwrap();
    DataSet::SMALL.load(&store).unwrap();
    assert_eq!(store.entry_count(), DataSet::SMALL.entry_count());
    for i in 0..DataSet::SMALL.n {
        let got = store.authorized_entries(&DataSet::agent_id(i));
        assert_eq!(got.len(), 15, "agent {i}");
    }
    let applied = store.last_applied();
    drop(store);
    let store = Store::open(dir.path(), StoreConfig::new(DataSet::trust_domain())).unwrap();
    assert_eq!(store.last_applied(), applied);
    assert_eq!(store.entry_count(), DataSet::SMALL.entry_count());
    assert_eq!(store.authorized_entries(&DataSet::agent_id(7)).len(), 15);
}

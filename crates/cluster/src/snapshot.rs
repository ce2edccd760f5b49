//! Serving snapshots: what a replica answers when another pulls the state named by a
//! [`SnapshotDescriptor`].

use ward_store::{SnapshotExport, Store};

use crate::transport::{SnapshotDescriptor, SnapshotError};

/// Chunk payload size for snapshot transfers.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Opens an export of `store` that satisfies `descriptor`: the current applied state, once
/// it is at or after the descriptor's index.
///
/// # Errors
/// [`SnapshotError::NotAvailable`] if this replica has not applied that far;
/// [`SnapshotError::Store`] if the export fails.
pub fn export_for(
    store: &Store,
    descriptor: &SnapshotDescriptor,
) -> Result<SnapshotExport, SnapshotError> {
    let export = store.export_snapshot_stream(SNAPSHOT_CHUNK_BYTES)?;
    let applied = export.info().applied;
    if applied < descriptor.index {
        return Err(SnapshotError::NotAvailable { wanted: descriptor.index, applied });
    }
    Ok(export)
}

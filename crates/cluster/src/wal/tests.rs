//! Tests of the journal: replay, torn tails against damage, rotation, syncs.

use super::*;

fn entry(index: u64, term: u64, size: usize) -> Entry {
    Entry { index, term, data: vec![7u8; size].into(), ..Default::default() }
}

/// Writes entries 1..=5 (term 2, 50 bytes each) to a new log in `dir`, synced, and
/// closes it.
fn write_five(dir: &Path) {
    let mut log = WalLogStore::open(dir).unwrap();
    log.append(&(1..=5).map(|i| entry(i, 2, 50)).collect::<Vec<_>>()).unwrap();
    log.flush().unwrap();
}

/// Asserts that opening the log in `dir` is refused as damage (`what` names the case).
fn refused_as_damaged(dir: &Path, what: &str) {
    let err = WalLogStore::open(dir).map(|_| ()).unwrap_err();
    assert!(matches!(err, LogStoreError::Corrupt(ref m) if m.contains("damaged")), "{what}: {err}");
}

/// Asserts that opening the log in `dir` is refused as corrupt, naming the segment `file`
/// and saying `what`.
fn refused_naming(dir: &Path, file: &str, what: &str) {
    let err = WalLogStore::open(dir).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, LogStoreError::Corrupt(ref m) if m.contains(file) && m.contains(what)),
        "{err}"
    );
}

fn newest(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files.pop().unwrap()
}

/// A segment's bytes up to the end of its last record, without the allocated space after
/// it: the file as a crash before any preallocation would leave it.
fn used(path: &Path) -> Vec<u8> {
    let mut bytes = fs::read(path).unwrap();
    let end =
        record_offsets(&bytes).last().map_or(MAGIC.len(), |at| next_record(&bytes, *at).unwrap().2);
    bytes.truncate(end);
    bytes
}

#[test]
fn what_was_not_flushed_is_not_promised_and_what_was_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = WalLogStore::open(dir.path()).unwrap();
    log.append(&(1..=3).map(|i| entry(i, 1, 10)).collect::<Vec<_>>()).unwrap();
    log.set_hard_state(&HardState { term: 1, vote: 1, commit: 2, ..Default::default() }).unwrap();
    log.flush().unwrap();
    // Appended but never flushed, as after a kill -9 between a ready's write and its
    // flush: a record still in memory is gone, the flushed ones stay.
    log.append(&[entry(4, 1, 10)]).unwrap();
    std::mem::forget(log);
    let again = WalLogStore::open(dir.path()).unwrap();
    assert_eq!(again.last_index(), 3);
    assert_eq!(again.hard_state().unwrap().commit, 2);
}

#[test]
fn a_sync_run_on_another_thread_keeps_what_was_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = WalLogStore::open(dir.path()).unwrap();
    let syncs = log.syncs();
    log.append(&(1..=3).map(|i| entry(i, 1, 10)).collect::<Vec<_>>()).unwrap();
    let sync = log.begin_sync().unwrap().expect("a sync to run elsewhere");
    // Written after the sync was asked for: not promised by it.
    log.append(&[entry(4, 1, 10)]).unwrap();
    std::thread::spawn(sync).join().unwrap().unwrap();
    assert_eq!(log.syncs(), syncs + 1);
    std::mem::forget(log);
    let again = WalLogStore::open(dir.path()).unwrap();
    assert_eq!(again.last_index(), 3);
}

#[test]
fn a_segment_due_to_close_is_synced_where_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = WalLogStore::open(dir.path()).unwrap();
    let size = 1 << 20;
    let mut index = 0;
    while log.written < SEGMENT_BYTES {
        index += 1;
        log.append(&[entry(index, 1, size)]).unwrap();
    }
    // The segment must be closed after its sync and before anything follows it.
    assert!(log.begin_sync().unwrap().is_none());
    log.flush().unwrap();
    assert_eq!(log.segment_files().len(), 2);
    log.append(&[entry(index + 1, 1, 10)]).unwrap();
    let sync = log.begin_sync().unwrap().expect("a fresh segment syncs elsewhere");
    std::thread::spawn(sync).join().unwrap().unwrap();
    std::mem::forget(log);
    assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), index + 1);
}

#[test]
fn a_torn_tail_is_cut_and_the_log_goes_on_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    write_five(dir.path());
    // The last record half on disk: its length promises more than the file holds.
    let path = newest(dir.path());
    let len = used(&path).len() as u64;
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);
    let mut log = WalLogStore::open(dir.path()).unwrap();
    assert_eq!(log.last_index(), 4);
    log.append(&[entry(5, 3, 50), entry(6, 3, 50)]).unwrap();
    log.flush().unwrap();
    let log = WalLogStore::open(dir.path()).unwrap();
    assert_eq!((log.last_index(), log.term(5)), (6, Ok(3)));
}

#[test]
fn a_flipped_byte_in_the_newest_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    write_five(dir.path());
    let path = newest(dir.path());
    let clean = used(&path);
    // In the last record, and in one with synced records after it: both are damage a
    // crash cannot make, and cutting there would drop acknowledged entries.
    for at in [clean.len() - 10, MAGIC.len() + HEADER + 30] {
        let mut bytes = clean.clone();
        bytes[at] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        refused_as_damaged(dir.path(), &format!("flip at {at}"));
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was cut");
    }
    // Zeros from a record on (space extended, never written) are a torn tail.
    let mut bytes = clean.clone();
    let last = *record_offsets(&clean).last().unwrap();
    bytes[last..].fill(0);
    fs::write(&path, &bytes).unwrap();
    let records_before = WalLogStore::open(dir.path()).unwrap().last_index();
    assert!(records_before < 5, "the zeroed record is dropped: {records_before}");
}

/// Offsets of the records in `bytes` (a padded segment), in order.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = past_padding(bytes, MAGIC.len());
    let mut offsets = Vec::new();
    while let Some((_, _, next)) = next_record(bytes, at) {
        offsets.push(at);
        at = past_padding(bytes, next);
    }
    offsets
}

/// Zeros one whole sector inside the payload of the record at `at`.
fn unwrite_a_sector_of(bytes: &mut [u8], at: usize) {
    let start = (at + HEADER).next_multiple_of(SECTOR);
    assert!(next_record(bytes, at).is_some_and(|(_, _, end)| start + SECTOR <= end));
    bytes[start..start + SECTOR].fill(0);
}

#[test]
fn a_record_with_an_unwritten_sector_is_a_torn_tail_even_with_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = WalLogStore::open(dir.path()).unwrap();
        log.append(&(1..=5).map(|i| entry(i, 2, 50)).collect::<Vec<_>>()).unwrap();
        log.flush().unwrap();
        // One write of several sectors after the last sync: the crash wrote the later
        // sectors and the size, not one in the middle.
        log.append(&(6..=10).map(|i| entry(i, 2, 1500)).collect::<Vec<_>>()).unwrap();
        log.flush().unwrap();
    }
    let path = newest(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let offsets = record_offsets(&bytes);
    // The last five records are entries 6..=10, one each.
    let seventh = offsets[offsets.len() - 4];
    unwrite_a_sector_of(&mut bytes, seventh);
    assert!(next_record(&bytes, offsets[offsets.len() - 1]).is_some(), "later ones read");
    fs::write(&path, &bytes).unwrap();
    let log = WalLogStore::open(dir.path()).unwrap();
    assert_eq!(log.last_index(), 6, "cut at entry 7");
    assert_eq!(fs::metadata(&path).unwrap().len(), seventh as u64);
    drop(log);
    // The same in a segment that is not the newest is damage.
    let mut older = fs::read(&path).unwrap();
    let offsets = record_offsets(&older);
    let sixth = offsets[offsets.len() - 1];
    unwrite_a_sector_of(&mut older, sixth);
    fs::write(&path, &older).unwrap();
    refused_as_damaged(dir.path(), "");
}

/// A flipped bit in the payload of any synced record of the newest segment refuses to
/// open, wherever the record falls against the sectors, though some payloads hold a
/// few zero bytes (a compaction's index and term) where they enter or leave a sector.
#[test]
fn a_flipped_payload_bit_in_any_record_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = WalLogStore::open(dir.path()).unwrap();
        for i in 1..=60u64 {
            log.append(&[entry(i, 2, 20 + (i as usize * 37) % 150)]).unwrap();
            if i % 7 == 0 {
                log.compact(i - 3).unwrap();
                let hs = HardState { term: 2, vote: 1, commit: i, ..Default::default() };
                log.set_hard_state(&hs).unwrap();
            }
        }
        log.compact(57).unwrap();
        log.flush().unwrap();
    }
    let path = newest(dir.path());
    let clean = used(&path);
    let offsets = record_offsets(&clean);
    assert!(offsets.len() > 60, "{} records", offsets.len());
    for &at in &offsets {
        let (_, _, end) = next_record(&clean, at).unwrap();
        for flip in [at + HEADER, end - 1] {
            let mut bytes = clean.clone();
            bytes[flip] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            refused_as_damaged(dir.path(), &format!("record at {at}, byte {flip}"));
            assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was cut");
        }
    }
}

/// One record's bytes: header, then `payload`.
fn record_bytes(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// A segment's bytes: the magic, a filler entry record that puts the next record at
/// `target_at`, then `records`.
fn laid_out(target_at: usize, records: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    let filler = target_at - MAGIC.len() - HEADER;
    bytes.extend(record_bytes(ENTRY, &vec![7u8; filler]));
    assert_eq!(bytes.len(), target_at);
    for r in records {
        bytes.extend_from_slice(r);
    }
    bytes
}

/// A damaged record that enters or leaves a sector with a few zero bytes (a length's
/// high byte, a compaction's term) is damage, not a torn tail; eight zeros from where
/// it enters a sector to that sector's end are a torn tail.
#[test]
fn a_few_zero_bytes_at_a_sector_edge_are_no_torn_write() {
    let compaction = [1u8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
    let after = record_bytes(ENTRY, &[9u8; 40]);
    let flipped = |mut bytes: Vec<u8>, at: usize| {
        bytes[at + HEADER] ^= 0x01;
        bytes
    };
    // Length 256 entering the sector at its last byte: that byte (the length's low
    // byte) is zero.
    let long = record_bytes(ENTRY, &[7u8; 256]);
    let bytes = flipped(laid_out(511, &[long.clone(), after.clone()]), 511);
    assert!(next_record(&bytes, 511).is_none());
    assert!(!torn_at(&bytes, 511), "a length's zero byte");
    // A compaction whose last five bytes (its term's high bytes) open a sector, with a
    // record after it and with none.
    let compact = record_bytes(COMPACT, &compaction);
    let at = 512 - (compact.len() - 5);
    let bytes = flipped(laid_out(at, &[compact.clone(), after.clone()]), at);
    assert!(!torn_at(&bytes, at), "a record follows in that sector");
    let bytes = flipped(laid_out(at, &[compact]), at);
    assert!(!torn_at(&bytes, at), "five zeros up to the end of the file");
    // The length and CRC of a record entering a sector at its last eight bytes, never
    // written, with its payload written in the next sector: torn.
    let mut bytes = laid_out(504, &[long, after]);
    bytes[504..512].fill(0);
    assert!(torn_at(&bytes, 504), "an unwritten header");
}

/// A segment created just before a crash, whose magic never reached the disk, is
/// removed: it does not stay behind the next segment, where it would read as damage.
#[test]
fn a_segment_whose_magic_never_reached_the_disk_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = WalLogStore::open(dir.path()).unwrap();
        log.append(&[entry(1, 2, 50), entry(2, 2, 50)]).unwrap();
        log.flush().unwrap();
    }
    let path = newest(dir.path());
    let seq = parse_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
    let unwritten = dir.path().join(segment_name(seq + 1));
    fs::write(&unwritten, &MAGIC[..3]).unwrap();
    assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 2);
    assert!(!unwritten.exists());
    assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 2, "opens again");
}

/// Records with a valid CRC and indexes no raft log reaches (a compaction or an entry
/// at `u64::MAX`) open or refuse with an error, never a panic.
#[test]
fn indexes_at_the_end_of_the_range_do_not_panic_replay() {
    let mut max = u64::MAX.to_le_bytes().to_vec();
    max.extend_from_slice(&1u64.to_le_bytes());
    let huge = entry(u64::MAX, 1, 10).write_to_bytes().unwrap();
    for records in [
        vec![record_bytes(COMPACT, &max)],
        vec![record_bytes(ENTRY, &huge)],
        vec![record_bytes(COMPACT, &max), record_bytes(ENTRY, &huge)],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = MAGIC.to_vec();
        records.iter().for_each(|r| bytes.extend_from_slice(r));
        fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
        let _ = WalLogStore::open(dir.path()).map(|log| log.last_index());
    }
}

#[test]
fn damage_in_an_older_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    write_five(dir.path());
    // Opening starts a new segment, so the one holding the entries is an older one now.
    drop(WalLogStore::open(dir.path()).unwrap());
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let older = files.iter().find(|p| used(p).len() > 300).unwrap().clone();
    let mut bytes = used(&older);
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    fs::write(&older, &bytes).unwrap();
    refused_as_damaged(dir.path(), "");
}

#[test]
fn segments_rotate_and_compaction_deletes_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = WalLogStore::open(dir.path()).unwrap();
    // 64 KiB entries: a segment holds about 256 of them.
    let size = 64 << 10;
    let per = SEGMENT_BYTES / size as u64;
    let total = per * 3 + 10;
    for i in 1..=total {
        log.append(&[entry(i, 1, size)]).unwrap();
        log.flush().unwrap();
    }
    assert!(log.segment_files().len() >= 4, "{:?}", log.segment_files());
    log.compact(total - 5).unwrap();
    log.flush().unwrap();
    // Rotation is what deletes: fill the current segment once more.
    for i in total + 1..=total + per {
        log.append(&[entry(i, 1, size)]).unwrap();
        log.flush().unwrap();
    }
    let held = log.segment_files();
    assert!(held.len() <= 3, "{held:?}");
    let on_disk = fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(on_disk, held.len());
    let again = WalLogStore::open(dir.path()).unwrap();
    assert_eq!((again.first_index(), again.last_index()), (total - 4, total + per));
    assert_eq!(again.entries(total - 4, total + per + 1, None).unwrap().len() as u64, per + 5);
}

#[test]
fn a_missing_segment_whose_entries_were_never_compacted_refuses_to_open() {
    // Segments holding entries 1.. with nothing compacted: each one is still needed.
    let fill = |dir: &Path| -> Vec<PathBuf> {
        let mut log = WalLogStore::open(dir).unwrap();
        let size = 64 << 10;
        let total = SEGMENT_BYTES / size as u64 * 3;
        for i in 1..=total {
            log.append(&[entry(i, 1, size)]).unwrap();
            log.flush().unwrap();
        }
        log.segment_files()
    };
    for (what, pick) in [("the oldest", 0), ("a middle", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let files = fill(dir.path());
        assert!(files.len() >= 4, "{files:?}");
        fs::remove_file(&files[pick]).unwrap();
        let err = WalLogStore::open(dir.path())
            .map(|log| (log.first_index(), log.last_index()))
            .expect_err(&format!("opened without {what} segment"));
        assert!(
            matches!(err, LogStoreError::Corrupt(ref m) if m.contains("never compacted")),
            "{what}: {err}"
        );
    }
}

#[test]
fn an_install_supersedes_every_older_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = WalLogStore::open(dir.path()).unwrap();
        log.append(&(1..=50).map(|i| entry(i, 1, 100)).collect::<Vec<_>>()).unwrap();
        log.flush().unwrap();
    }
    let mut log = WalLogStore::open(dir.path()).unwrap();
    let meta = SnapshotMetadata { index: 20, term: 4, ..Default::default() };
    log.install_snapshot(&meta).unwrap();
    log.flush().unwrap();
    assert_eq!(log.segment_files().len(), 1, "{:?}", log.segment_files());
    log.append(&[entry(21, 4, 10)]).unwrap();
    log.flush().unwrap();
    let again = WalLogStore::open(dir.path()).unwrap();
    assert_eq!((again.first_index(), again.last_index()), (21, 21));
    assert_eq!(again.term(20), Ok(4));
    assert_eq!(again.snapshot_meta().unwrap(), meta);
}

#[test]
fn a_log_in_the_store_database_moves_into_the_journal_once() {
    let td = ward_core::TrustDomain::new("example.org").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ward_store::Store::open(dir.path().join("store"), ward_store::StoreConfig::new(td))
        .unwrap();
    let hs = HardState { term: 3, vote: 1, commit: 6, ..Default::default() };
    let cs = ConfState { voters: vec![1, 2, 3], ..Default::default() };
    {
        let mut old = crate::SledLogStore::open(&store).unwrap();
        old.append(&(1..=8).map(|i| entry(i, 3, 20)).collect::<Vec<_>>()).unwrap();
        old.compact(2).unwrap();
        old.set_hard_state(&hs).unwrap();
        old.set_conf_state(&cs).unwrap();
        old.flush().unwrap();
    }
    let wal_dir = dir.path().join("raft-log");
    let log = open_log(&wal_dir, &store).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (3, 8));
    assert_eq!((log.term(2), log.term(8)), (Ok(3), Ok(3)));
    assert_eq!((log.hard_state().unwrap(), log.conf_state().unwrap()), (hs.clone(), cs.clone()));
    drop(log);
    // The database's copy is gone: opening again takes the journal as it is.
    let old = crate::SledLogStore::open(&store).unwrap();
    assert_eq!((old.last_index(), old.hard_state().unwrap()), (0, HardState::default()));
    let log = open_log(&wal_dir, &store).unwrap();
    assert_eq!((log.first_index(), log.last_index(), log.hard_state().unwrap()), (3, 8, hs));
}

/// Segments are allocated whole when created; the zeros after the last record end the
/// replay of the newest segment. Opening gives back the space after the last record of the
/// segment it will no longer append to, so older segments never end in zeros, and zeros
/// where an older one's records should be are damage (synced records lost).
#[test]
fn segments_are_allocated_whole_and_replay_ends_at_their_zeros() {
    let dir = tempfile::tempdir().unwrap();
    write_five(dir.path());
    let first = newest(dir.path());
    assert_eq!(fs::metadata(&first).unwrap().len(), SEGMENT_BYTES);
    let records = used(&first);
    assert!(records.len() < 1024, "records at the start: {}", records.len());
    let mut log = WalLogStore::open(dir.path()).unwrap();
    assert_eq!(log.last_index(), 5);
    assert_eq!(fs::metadata(&first).unwrap().len(), records.len() as u64, "given back");
    assert_eq!(fs::read(&first).unwrap(), records);
    log.append(&(6..=8).map(|i| entry(i, 3, 50)).collect::<Vec<_>>()).unwrap();
    log.flush().unwrap();
    let second = newest(dir.path());
    assert_eq!(fs::metadata(&second).unwrap().len(), SEGMENT_BYTES);
    drop(log);
    let log = WalLogStore::open(dir.path()).unwrap();
    assert_eq!((log.last_index(), log.term(5), log.term(8)), (8, Ok(2), Ok(3)));
    drop(log);
    // Of all the segments, only the one appended to now holds allocated space.
    let allocated: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|f| fs::metadata(f).unwrap().len() == SEGMENT_BYTES)
        .collect();
    assert_eq!(allocated, vec![newest(dir.path())]);
    // Entries 4 and 5 of the first segment zeroed: an older segment, so damage, not an end.
    let offsets = record_offsets(&records);
    let fourth = offsets.iter().rev().nth(1).copied().unwrap();
    let mut zeroed = records.clone();
    zeroed[fourth..].fill(0);
    fs::write(&first, &zeroed).unwrap();
    refused_naming(dir.path(), first.file_name().unwrap().to_str().unwrap(), "damaged");
}

/// A segment being made when the process stopped (`<seq>.wal.new`, never renamed) is
/// removed, whatever reached the disk of it; so is a segment an earlier version made in
/// place whose size reached the disk and whose magic did not (only zeros).
#[test]
fn a_segment_that_never_got_its_magic_or_its_name_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_five(dir.path());
    let path = newest(dir.path());
    let seq = parse_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
    let making = dir.path().join(format!("{}{NEW_SUFFIX}", &segment_name(seq + 1)[..16]));
    fs::write(&making, vec![0u8; 1 << 20]).unwrap();
    let zeros = dir.path().join(segment_name(seq + 2));
    let mut bytes = MAGIC[..2].to_vec();
    bytes.resize(1 << 20, 0);
    fs::write(&zeros, &bytes).unwrap();
    assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 5);
    assert!(!making.exists() && !zeros.exists());
    assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 5, "opens again");
    // Anything but zeros after a partial magic is damage. (Opening gave back the space of
    // the segment the last open started, so it replays as an older segment.)
    let last = newest(dir.path());
    let log = WalLogStore::open(dir.path()).unwrap();
    drop(log);
    fs::remove_file(newest(dir.path())).unwrap();
    assert!(fs::metadata(&last).unwrap().len() < 1024);
    let damaged = dir.path().join(segment_name(seq + 9));
    bytes[100] = 1;
    fs::write(&damaged, &bytes).unwrap();
    refused_naming(dir.path(), &segment_name(seq + 9), "not a raft log segment");
}

/// A record whose header reached the allocated space but whose payload did not (it reads
/// zeros) is a torn tail in the newest segment, cut there, and damage in an older one.
#[test]
fn a_header_without_its_payload_in_allocated_space_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_five(dir.path());
    let path = newest(dir.path());
    let end = used(&path).len();
    let header = &record_bytes(ENTRY, &[7u8; 600])[..HEADER];
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, header, end as u64).unwrap();
    drop(f);
    let damaged = fs::read(&path).unwrap();
    assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 5);
    assert_eq!(fs::metadata(&path).unwrap().len(), end as u64, "cut at the torn record");
    // The same bytes in what is now an older segment.
    fs::write(&path, &damaged).unwrap();
    refused_as_damaged(dir.path(), "torn record in an older segment");
}

/// No record of a segment starts within a sector's last 8 bytes: zeros pad the sector
/// instead, and replay reads past them. A header torn where it starts (its first sector
/// never written, the next one written) then always reads as a torn tail.
#[test]
fn records_never_start_in_a_sectors_last_bytes_and_a_torn_header_there_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = WalLogStore::open(dir.path()).unwrap();
    // Sizes stepping by one byte put record starts at every offset within a sector.
    for index in 1..=700u64 {
        log.append(&[entry(index, 2, index as usize)]).unwrap();
        if index % 50 == 0 {
            log.flush().unwrap();
        }
    }
    log.flush().unwrap();
    drop(log);
    let path = newest(dir.path());
    let bytes = used(&path);
    let offsets = record_offsets(&bytes);
    assert!(offsets.len() > 700, "{} records", offsets.len());
    let mut padded = 0;
    for (i, at) in offsets.iter().enumerate() {
        assert!(SECTOR - at % SECTOR >= MIN_ZERO_SPAN, "a record starts at {at}");
        let prev_end =
            if i == 0 { MAGIC.len() } else { next_record(&bytes, offsets[i - 1]).unwrap().2 };
        padded += usize::from(prev_end != *at);
    }
    assert!(padded > 5, "only {padded} paddings");
    assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 700);
    // The crash shape the padding is for, where a record can start: the sector where the
    // last-but-one record (entry 699) begins never written, the sectors after it written.
    let victim = offsets[offsets.len() - 2];
    let mut torn = bytes.clone();
    torn[victim..victim.next_multiple_of(SECTOR)].fill(0);
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|f| **f != path) {
        fs::remove_file(f).unwrap();
    }
    fs::write(&path, &torn).unwrap();
    let log = WalLogStore::open(dir.path()).unwrap();
    assert_eq!(log.last_index(), 698, "cut at the torn record");
    assert_eq!(fs::metadata(&path).unwrap().len(), victim as u64);
}

/// Segments of earlier versions (`WARDWAL1`) have no padding and are still read, a record
/// starting in a sector's last bytes included.
#[test]
fn unpadded_segments_of_earlier_versions_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // Entry 1 sized so that entry 2 starts at byte 509, three bytes before a sector's end.
    let first_len = 509 - MAGIC.len() - HEADER;
    let first = (0..first_len)
        .map(|size| entry(1, 1, size).write_to_bytes().unwrap())
        .find(|enc| enc.len() == first_len)
        .unwrap();
    let mut bytes = MAGIC_UNPADDED.to_vec();
    bytes.extend(record_bytes(ENTRY, &first));
    assert_eq!(bytes.len(), 509);
    bytes.extend(record_bytes(ENTRY, &entry(2, 1, 30).write_to_bytes().unwrap()));
    fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
    let log = WalLogStore::open(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 2));
}

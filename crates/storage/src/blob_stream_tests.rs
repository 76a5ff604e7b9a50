//! Tests of runs stored as their bytes arrive: a reader waits only for its own pieces, and a
//! source that fails midway is asked again for the rest only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::testing::{bytes, store_config, MemSource};
use crate::{PieceStore, Priority, StoreConfig};

const PL: u32 = 64 * 1024;

fn config() -> StoreConfig {
    store_config(PL, 8)
}

/// The piece a reader needs is handed over as soon as it arrived, while the rest of the run it
/// asked for is still held back by the source; the run stays one source request.
#[tokio::test]
async fn a_reader_gets_its_piece_before_the_rest_of_the_run_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let s = PieceStore::open(dir.path(), config()).await.unwrap();
    let data = bytes(8 * PL as usize, 21);
    let gate = Arc::new(Semaphore::new(0));
    // Chunks of half a piece: a piece is whole only once both halves are in.
    let src = MemSource::chunked(data.clone(), PL as usize / 2, gate.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    let run = 0..8 * u64::from(PL);
    let first = u64::from(PL)..2 * u64::from(PL);

    let b = blob.clone();
    let (r, f) = (run.clone(), first.clone());
    let reader = tokio::spawn(async move { b.ensure_within(r, f, Priority::OnDemand).await });
    gate.add_permits(3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !reader.is_finished(),
        "piece 1 is not whole after 3 half-pieces"
    );
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the reader of piece 1 must not wait for the rest of the run")
        .unwrap()
        .unwrap();
    assert!(blob.has_range(0..first.end));
    assert!(
        !blob.has_range(first.end..first.end + 1),
        "the rest is held back"
    );

    // A second reader of a later piece of the same run joins it instead of asking again.
    let b = blob.clone();
    let later = tokio::spawn(async move { b.read(run, Priority::OnDemand).await });
    gate.add_permits(12);
    let got = later.await.unwrap().unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(src.requests(), vec![0..8 * u64::from(PL)]);
    assert_eq!(blob.fetched_bytes(), 8 * u64::from(PL));
}

/// A source that fails after some pieces arrived is asked again for the rest only, and the
/// reader never sees the failure.
#[tokio::test]
async fn a_source_failing_midway_is_asked_again_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = PieceStore::open(dir.path(), config()).await.unwrap();
    let data = bytes(6 * PL as usize + 100, 22);
    let gate = Arc::new(Semaphore::new(1 << 20));
    let src = MemSource::chunked(data.clone(), 2 * PL as usize, gate);
    src.fail_midway.store(true, Ordering::SeqCst);
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    let all = 0..data.len() as u64;
    let got = blob.read(all.clone(), Priority::OnDemand).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(
        src.requests(),
        vec![all.clone(), 2 * u64::from(PL)..all.end],
        "the second request starts after the two pieces of the first chunk"
    );
    assert_eq!(blob.fetched_bytes(), all.end);
}

/// A source that fails before a whole piece arrived fails the read (nothing to resume from),
/// and one whose chunk runs past the range fails it with nothing marked.
#[tokio::test]
async fn a_failure_before_a_whole_piece_and_extra_bytes_fail_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = PieceStore::open(dir.path(), config()).await.unwrap();
    let data = bytes(4 * PL as usize, 23);
    let gate = Arc::new(Semaphore::new(1 << 20));
    let src = MemSource::chunked(data.clone(), PL as usize / 2, gate);
    src.fail_midway.store(true, Ordering::SeqCst);
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    let e = blob
        .read(0..u64::from(PL), Priority::OnDemand)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected failure midway"), "{e}");
    assert!(e.is_retryable(), "{e}");
    assert_eq!(src.requests().len(), 1);
    assert_eq!(blob.fetched_bytes(), 0);

    // A chunk longer than the range is refused whole (another blob: this one has a source).
    let src = MemSource::new(bytes(4 * PL as usize, 24));
    src.long.store(true, Ordering::SeqCst);
    let blob = s
        .blob(&src.digest(), 4 * u64::from(PL), Arc::new(src.clone()))
        .unwrap();
    let e = blob
        .read(0..u64::from(PL), Priority::OnDemand)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("returned"), "{e}");
    assert_eq!(blob.fetched_bytes(), 0);
    assert!(!blob.has_range(0..1));
}

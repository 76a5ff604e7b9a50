//! Tests of fetching, single-flight, coalescing, persistence and verification.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::testing::{bytes, store_config, MemSource};
use crate::{Blob, Deletion, PieceStore, Priority, StoreConfig, StoreError};

const PL: u32 = 64 * 1024;

fn config() -> StoreConfig {
    store_config(PL, 4)
}

async fn store(dir: &std::path::Path) -> PieceStore {
    PieceStore::open(dir, config()).await.unwrap()
}

#[tokio::test]
async fn reads_fetch_only_the_pieces_they_need_then_hit() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(10 * PL as usize + 123, 1);
    let src = MemSource::new(data.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();

    let r = 3 * PL as u64 + 10..4 * PL as u64 + 20;
    let got = blob.read(r.clone(), Priority::OnDemand).await.unwrap();
    assert_eq!(&got[..], &data[r.start as usize..r.end as usize]);
    assert_eq!(src.requests(), vec![3 * PL as u64..5 * PL as u64]);
    assert!(blob.has_range(r.clone()) && !blob.has_range(0..1));
    assert_eq!(blob.fetched_bytes(), 2 * PL as u64);

    let again = blob
        .read(r.start + 5..r.end, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(&again[..], &data[r.start as usize + 5..r.end as usize]);
    assert_eq!(
        src.requests().len(),
        1,
        "second read must be served locally"
    );
    assert_eq!(s.stats().hit_bytes, r.end - r.start - 5);

    // The short last piece.
    let tail = data.len() as u64 - 50..data.len() as u64;
    let got = blob.read(tail.clone(), Priority::OnDemand).await.unwrap();
    assert_eq!(&got[..], &data[tail.start as usize..]);
    assert_eq!(src.requests()[1], 10 * PL as u64..data.len() as u64);
    assert_eq!(blob.fetched_bytes(), 2 * PL as u64 + 123);
    assert_eq!(s.usage().bytes_on_disk, 2 * PL as u64 + 123);

    // Empty and out-of-range reads.
    assert!(blob
        .read(5..5, Priority::OnDemand)
        .await
        .unwrap()
        .is_empty());
    let e = blob
        .read(0..data.len() as u64 + 1, Priority::OnDemand)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::OutOfRange { .. }), "{e}");
}

#[tokio::test]
async fn concurrent_readers_share_one_request_and_adjacent_pieces_coalesce() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(16 * PL as usize, 2);
    let src = MemSource::slow(data.clone(), Duration::from_millis(50));
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();

    let mut readers = Vec::new();
    for i in 0..8u64 {
        let b = blob.clone();
        readers.push(tokio::spawn(async move {
            b.read(i * 100..2 * PL as u64 - i, Priority::OnDemand).await
        }));
    }
    for r in readers {
        r.await.unwrap().unwrap();
    }
    assert_eq!(
        src.requests(),
        vec![0..2 * PL as u64],
        "one request for all readers"
    );

    // Ten missing pieces, at most four per request.
    blob.ensure(2 * PL as u64..12 * PL as u64, Priority::OnDemand)
        .await
        .unwrap();
    let reqs = src.requests();
    assert_eq!(
        reqs[1..],
        [
            2 * PL as u64..6 * PL as u64,
            6 * PL as u64..10 * PL as u64,
            10 * PL as u64..12 * PL as u64
        ]
    );
    assert!(src.max_in_flight.load(Ordering::SeqCst) <= 4);
}

#[tokio::test]
async fn a_cancelled_reader_does_not_leave_a_half_fetched_piece() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(4 * PL as usize, 3);
    let src = MemSource::slow(data.clone(), Duration::from_millis(100));
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    let b = blob.clone();
    let reader = tokio::spawn(async move { b.read(0..10, Priority::OnDemand).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    reader.abort();
    // The fetch still completes and a later reader gets the bytes without a new request.
    let got = blob.read(0..10, Priority::OnDemand).await.unwrap();
    assert_eq!(&got[..], &data[..10]);
    assert_eq!(src.requests().len(), 1);
}

#[tokio::test]
async fn source_errors_and_short_responses_are_reported_and_nothing_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(4 * PL as usize, 4);
    let src = MemSource::new(data.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();

    src.fail.store(true, Ordering::SeqCst);
    let e = blob.read(0..10, Priority::OnDemand).await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("injected failure"),
        "{e}"
    );
    assert_eq!(blob.fetched_bytes(), 0);

    src.fail.store(false, Ordering::SeqCst);
    src.short.store(true, Ordering::SeqCst);
    let e = blob.read(0..10, Priority::OnDemand).await.unwrap_err();
    assert!(e.to_string().contains("returned"), "{e}");
    assert_eq!(blob.fetched_bytes(), 0);

    src.short.store(false, Ordering::SeqCst);
    assert_eq!(
        &blob.read(0..10, Priority::OnDemand).await.unwrap()[..],
        &data[..10]
    );
}

#[tokio::test]
async fn pieces_survive_a_restart_and_a_damaged_bitmap_means_refetch() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(6 * PL as usize, 5);
    let src = MemSource::new(data.clone());
    let digest = src.digest();
    {
        let s = store(dir.path()).await;
        let blob = s
            .blob(&digest, data.len() as u64, Arc::new(src.clone()))
            .unwrap();
        blob.ensure(PL as u64..3 * PL as u64, Priority::OnDemand)
            .await
            .unwrap();
        // No flush: like a daemon killed as soon as the read returned, before the sync.
    }
    let s = store(dir.path()).await;
    assert_eq!(s.usage().bytes_on_disk, 2 * PL as u64);
    let src2 = MemSource::new(data.clone());
    let blob = s
        .blob(&digest, data.len() as u64, Arc::new(src2.clone()))
        .unwrap();
    let got = blob
        .read(PL as u64..3 * PL as u64, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[PL as usize..3 * PL as usize]);
    assert!(
        src2.requests().is_empty(),
        "restored pieces must not be fetched again"
    );
    s.flush().await.unwrap();
    drop((blob, s));

    // Damage the bitmaps: the pieces are fetched again, never served unverified.
    let hex = digest.strip_prefix("sha256:").unwrap();
    for name in ["bitmap", "boot-bitmap"] {
        let bitmap = dir.path().join("sha256").join(hex).join(name);
        let Ok(mut raw) = std::fs::read(&bitmap) else {
            continue; // no boot ID on this kernel
        };
        let at = raw.len() - 40;
        raw[at] ^= 1;
        std::fs::write(&bitmap, raw).unwrap();
    }
    let s = store(dir.path()).await;
    assert_eq!(s.usage().bytes_on_disk, 0);
    let src3 = MemSource::new(data.clone());
    let blob = s
        .blob(&digest, data.len() as u64, Arc::new(src3.clone()))
        .unwrap();
    blob.read(PL as u64..PL as u64 + 1, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(src3.requests().len(), 1);

    // Asking for the blob with another size is refused.
    let e = s.blob(&digest, 7, Arc::new(src3.clone())).unwrap_err();
    assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
}

#[tokio::test]
async fn a_complete_blob_is_verified_and_wrong_bytes_are_thrown_away() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(5 * PL as usize + 7, 6);
    let src = MemSource::new(data.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    blob.fetch_all(Priority::Background).await.unwrap();
    assert!(blob.is_complete() && blob.is_verified());

    let liar = MemSource::new(data.clone());
    liar.corrupt.store(true, Ordering::SeqCst);
    let digest = MemSource::new(bytes(3 * PL as usize, 7)).digest();
    let bad = s
        .blob(&digest, data.len() as u64, Arc::new(liar.clone()))
        .unwrap();
    let e = bad.fetch_all(Priority::Background).await.unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(!bad.is_complete() && !bad.is_verified());
    // Everything was thrown away; a reader racing the verification may have re-fetched a
    // few pieces since.
    assert!(bad.fetched_bytes() < data.len() as u64);
    assert_eq!(s.stats().digest_failures, 1);
    assert_eq!(
        s.usage().bytes_on_disk,
        data.len() as u64 + bad.fetched_bytes()
    );
}

#[tokio::test]
async fn invalidated_pieces_are_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(3 * PL as usize, 8);
    let src = MemSource::new(data.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    blob.ensure(0..3 * PL as u64, Priority::OnDemand)
        .await
        .unwrap();
    blob.invalidate(PL as u64 + 5..PL as u64 + 6).await.unwrap();
    assert!(!blob.has_range(PL as u64..PL as u64 + 1));
    assert!(blob.has_range(0..PL as u64) && blob.has_range(2 * PL as u64..3 * PL as u64));
    blob.read(PL as u64..PL as u64 + 1, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(src.requests().last().unwrap(), &(PL as u64..2 * PL as u64));
}

#[tokio::test]
async fn bad_digests_are_refused_before_touching_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let src = MemSource::new(vec![1, 2, 3]);
    for d in [
        "sha256:../../etc",
        "sha512:00",
        "sha256:ABCDEF0000000000000000000000000000000000000000000000000000000000",
        "md5:0000000000000000000000000000000000000000000000000000000000000000",
        "",
    ] {
        let e = s.blob(d, 3, Arc::new(src.clone())).unwrap_err();
        assert!(matches!(e, StoreError::InvalidDigest(_)), "{d}: {e}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .count(),
        0
    );
}

/// A blob of `pieces` pieces of `bytes(…, seed)`, fetched whole into `s`.
async fn complete_blob(
    s: &PieceStore,
    pieces: usize,
    seed: u64,
) -> (Vec<u8>, Arc<MemSource>, Blob) {
    let data = bytes(pieces * PL as usize, seed);
    let src = MemSource::new(data.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    blob.fetch_all(Priority::Background).await.unwrap();
    (data, src, blob)
}

#[tokio::test]
async fn deletion_on_request_spares_mounted_and_held_blobs_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let (data, src, blob) = complete_blob(&s, 3, 7).await;
    let digest = src.digest();
    let on_disk = dir
        .path()
        .join("sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    assert_eq!(
        s.delete_on_request("sha256:nothing").unwrap(),
        Deletion::NotHeld
    );
    let mounted = blob.pin_mounted();
    assert_eq!(s.delete_on_request(&digest).unwrap(), Deletion::Mounted(1));
    drop(mounted);
    // A plain pin (an unpack, a download) or another handle keeps it too.
    let pin = blob.pin();
    assert_eq!(s.delete_on_request(&digest).unwrap(), Deletion::InUse);
    drop(pin);
    assert_eq!(s.delete_on_request(&digest).unwrap(), Deletion::InUse);
    drop(blob);
    assert!(on_disk.exists());
    assert_eq!(
        s.delete_on_request(&digest).unwrap(),
        Deletion::Deleted {
            freed: data.len() as u64
        }
    );
    assert!(!on_disk.exists(), "its pieces are gone from disk");
    assert_eq!(s.usage().bytes_on_disk, 0);
    assert!(s.get(&digest).is_none());
    assert_eq!(s.delete_on_request(&digest).unwrap(), Deletion::NotHeld);
}

#[tokio::test]
async fn a_deleted_blob_opened_again_gets_a_fresh_directory_and_leftovers_go_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let (data, src, blob) = complete_blob(&s, 2, 9).await;
    let digest = src.digest();
    drop(blob);
    assert!(matches!(
        s.delete_on_request(&digest).unwrap(),
        Deletion::Deleted { .. }
    ));
    // Opened again right away: its own directory, whole and readable.
    let again = s.blob(&digest, data.len() as u64, Arc::new(src)).unwrap();
    assert_eq!(
        &again
            .read(0..data.len() as u64, Priority::OnDemand)
            .await
            .unwrap()[..],
        &data[..]
    );
    let kind = dir.path().join("sha256");
    let names: Vec<String> = std::fs::read_dir(&kind)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [digest.strip_prefix("sha256:").unwrap()],
        "no directory left aside"
    );
    // A directory left aside by a crash mid-removal is removed when the store opens.
    drop((again, s));
    let leftover = kind.join(format!("{}.deleting-7", "ab".repeat(32)));
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("data"), b"x").unwrap();
    let _s = store(dir.path()).await;
    assert!(!leftover.exists());
}

#[tokio::test]
async fn eviction_removes_least_recently_used_blobs_nobody_holds() {
    let dir = tempfile::tempdir().unwrap();
    let s = PieceStore::open(
        dir.path(),
        StoreConfig {
            capacity_bytes: 5 * u64::from(PL),
            ..config()
        },
    )
    .await
    .unwrap();
    let mut digests = Vec::new();
    let mut pinned = None;
    for i in 0..4u64 {
        let data = bytes(2 * PL as usize, 100 + i);
        let src = MemSource::new(data.clone());
        let blob = s
            .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
            .unwrap();
        blob.fetch_all(Priority::Background).await.unwrap();
        if i == 0 {
            pinned = Some((blob.pin(), blob.clone()));
        }
        digests.push(src.digest());
    }
    s.evict_to_capacity();
    let usage = s.usage();
    assert!(usage.bytes_on_disk <= 5 * u64::from(PL), "{usage:?}");
    assert_eq!(usage.blobs, 2, "{usage:?}");
    assert_eq!(usage.pinned, 1);
    let exists = |d: &String| {
        dir.path()
            .join("sha256")
            .join(d.strip_prefix("sha256:").unwrap())
            .exists()
    };
    assert!(exists(&digests[0]), "the pinned blob stays");
    assert!(!exists(&digests[1]), "the oldest unpinned blob goes");
    assert!(exists(&digests[3]));
    // Held blobs are never removed, released ones can be.
    assert_eq!(s.delete_on_request(&digests[0]).unwrap(), Deletion::InUse);
    drop(pinned);
    assert!(matches!(
        s.delete_on_request(&digests[0]).unwrap(),
        Deletion::Deleted { .. }
    ));
    assert!(!exists(&digests[0]));
}

/// A store whose background fills wait `ms` after the last urgent fetch.
async fn store_pausing_fills(dir: &std::path::Path, ms: u64) -> PieceStore {
    let config = StoreConfig {
        background_pause_ms: ms,
        ..config()
    };
    PieceStore::open(dir, config).await.unwrap()
}

#[tokio::test]
async fn background_fetches_pause_while_containers_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_pausing_fills(dir.path(), 300).await;
    let data = bytes(8 * PL as usize, 9);
    let src = MemSource::new(data.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    blob.read(0..1, Priority::OnDemand).await.unwrap();
    let started = std::time::Instant::now();
    blob.fetch_all(Priority::Background).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(blob.is_verified());
}

#[tokio::test]
async fn a_fill_started_for_an_expected_reader_lets_the_reader_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_pausing_fills(dir.path(), 300).await;
    let data = bytes(8 * PL as usize, 11);
    let src = MemSource::new(data.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    s.demand_expected();
    let fill = tokio::spawn({
        let blob = blob.clone();
        async move { blob.fetch_all(Priority::Background).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let piece = 5 * PL as u64..5 * PL as u64 + 1;
    blob.read(piece.clone(), Priority::OnDemand).await.unwrap();
    fill.await.unwrap().unwrap();
    let requests = src.requests();
    assert!(
        requests[0].start <= piece.start && piece.end <= requests[0].end,
        "the reader's fetch goes first: {requests:?}"
    );
    assert!(blob.is_verified());
}

#[tokio::test]
async fn local_reads_never_fetch_and_sources_hear_about_stored_ranges() {
    type Ranges = Arc<std::sync::Mutex<Vec<std::ops::Range<u64>>>>;
    struct Recording(Arc<MemSource>, Ranges);
    impl crate::RangeSource for Recording {
        fn fetch(
            &self,
            range: std::ops::Range<u64>,
            priority: Priority,
        ) -> futures::future::BoxFuture<'static, Result<bytes::Bytes, crate::SourceError>> {
            crate::RangeSource::fetch(&self.0, range, priority)
        }
        fn stored(&self, range: std::ops::Range<u64>) {
            self.1.lock().unwrap().push(range);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(3 * PL as usize + 10, 10);
    let src = MemSource::new(data.clone());
    let stored: Ranges = Arc::default();
    let source = Recording(src.clone(), stored.clone());
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(source))
        .unwrap();
    assert!(blob.read_local(0..10).await.unwrap().is_none());
    assert!(src.requests().is_empty(), "local reads never fetch");
    blob.ensure(PL as u64..PL as u64 + 1, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(*stored.lock().unwrap(), vec![PL as u64..2 * PL as u64]);
    let got = blob
        .read_local(PL as u64..2 * PL as u64)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &data[PL as usize..2 * PL as usize]);
    assert!(s.get(&src.digest()).is_some() && s.get("sha256:0").is_none());
}

#[tokio::test]
async fn task_blobs_are_kept_and_reloaded_without_a_content_digest() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(3 * PL as usize, 11);
    let name = format!("task:{}", "ab".repeat(32));
    {
        let s = store(dir.path()).await;
        let src = MemSource::new(data.clone());
        let blob = s.blob(&name, data.len() as u64, Arc::new(src)).unwrap();
        blob.fetch_all(Priority::Background).await.unwrap();
        assert!(blob.is_verified());
    }
    let s = store(dir.path()).await;
    let blob = s.get(&name).expect("reloaded");
    assert!(blob.is_complete());
    assert_eq!(
        &blob.read_local(0..10).await.unwrap().unwrap()[..],
        &data[..10]
    );
}

#[tokio::test]
async fn whole_blob_downloads_keep_several_requests_in_flight_and_yield_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = PieceStore::open(
        dir.path(),
        StoreConfig {
            whole_blob_requests: 4,
            ..config()
        },
    )
    .await
    .unwrap();
    let data = bytes(10 * PL as usize + 3, 9);
    let src = MemSource::slow(data.clone(), Duration::from_millis(30));
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    // max_fetch_bytes (4 pieces) split over 4 requests: one piece each, 4 at once.
    let ranges: Vec<Range<u64>> = blob
        .fetch_in_order(Priority::OnDemand)
        .map(|r| r.unwrap())
        .collect()
        .await;
    let pl = u64::from(PL);
    let want: Vec<Range<u64>> = (0..11)
        .map(|i| i * pl..((i + 1) * pl).min(data.len() as u64))
        .collect();
    assert_eq!(ranges, want, "yielded front to back");
    assert_eq!(src.max_in_flight.load(Ordering::SeqCst), 4);
    assert!(src.requests().iter().all(|r| r.end - r.start <= pl));
    blob.fetch_all(Priority::OnDemand).await.unwrap();
    assert!(blob.is_verified());
    assert_eq!(src.requests().len(), 11, "nothing fetched twice");
    // Background work stays one request at a time.
    let src2 = MemSource::slow(bytes(6 * PL as usize, 10), Duration::from_millis(5));
    let b2 = s
        .blob(&src2.digest(), 6 * pl, Arc::new(src2.clone()))
        .unwrap();
    b2.fetch_all(Priority::Background).await.unwrap();
    assert_eq!(src2.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_read_in_order_while_it_arrives_and_failures_are_errors_not_eof() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(9 * PL as usize + 11, 12);
    let src = MemSource::slow(data.clone(), Duration::from_millis(5));
    let blob = s
        .blob(&src.digest(), data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    let mut reader = blob.read_in_order(Priority::OnDemand);
    let got = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        // Small reads across range boundaries.
        let mut buf = [0u8; 10_000];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    assert!(got == data, "same bytes in order");
    blob.fetch_all(Priority::OnDemand).await.unwrap();
    assert!(blob.is_verified());

    // A source that fails: the reader reports an error instead of a short, clean end.
    let bad = MemSource::new(bytes(3 * PL as usize, 13));
    bad.fail.store(true, Ordering::SeqCst);
    let b = s
        .blob(&bad.digest(), 3 * u64::from(PL), Arc::new(bad.clone()))
        .unwrap();
    let mut reader = b.read_in_order(Priority::OnDemand);
    let r = tokio::task::spawn_blocking(move || reader.read_to_end(&mut Vec::new()))
        .await
        .unwrap();
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn a_blob_can_take_the_swarms_piece_length_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(3 << 20, 14);
    let src = MemSource::new(data.clone());
    let b = s
        .blob_with_piece_length(
            &src.digest(),
            data.len() as u64,
            Arc::new(src.clone()),
            1 << 20,
        )
        .unwrap();
    assert_eq!(b.piece_length(), 1 << 20);
    b.fetch_all(Priority::OnDemand).await.unwrap();
    assert!(b.is_verified());
    // An existing blob keeps its length whatever is asked later.
    let again = s
        .blob_with_piece_length(
            &src.digest(),
            data.len() as u64,
            Arc::new(src.clone()),
            4 << 20,
        )
        .unwrap();
    assert_eq!(again.piece_length(), 1 << 20);
    assert_eq!(s.piece_length_of(&src.digest()), 1 << 20);
    for bad in [1000, 8 << 10, 128 << 20] {
        let other = MemSource::new(bytes(1000, 15));
        assert!(matches!(
            s.blob_with_piece_length(&other.digest(), 1000, Arc::new(other.clone()), bad),
            Err(StoreError::Config(_))
        ));
    }
}

#[tokio::test]
async fn a_source_is_attached_once_replaced_only_by_refresh_and_released_on_removal() {
    struct Counting {
        inner: Arc<MemSource>,
        released: Arc<std::sync::atomic::AtomicUsize>,
    }
    impl crate::RangeSource for Counting {
        fn fetch(
            &self,
            range: Range<u64>,
            priority: Priority,
        ) -> futures::future::BoxFuture<'static, Result<bytes::Bytes, crate::SourceError>> {
            self.inner.fetch(range, priority)
        }
        fn released(&self) {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path()).await;
    let data = bytes(3 * PL as usize, 16);
    let (first, second, third) = (
        MemSource::new(data.clone()),
        MemSource::new(data.clone()),
        MemSource::new(data.clone()),
    );
    let released = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = Counting {
        inner: first.clone(),
        released: released.clone(),
    };
    let size = data.len() as u64;
    let blob = s.blob(&first.digest(), size, Arc::new(counting)).unwrap();
    // A later open keeps the first source.
    let again = s
        .blob(&first.digest(), size, Arc::new(second.clone()))
        .unwrap();
    again.read(0..1, Priority::OnDemand).await.unwrap();
    assert_eq!((first.requests().len(), second.requests().len()), (1, 0));
    // An explicit refresh replaces it.
    again.refresh_origin(Arc::new(third.clone()));
    again
        .read(PL as u64..PL as u64 + 1, Priority::OnDemand)
        .await
        .unwrap();
    assert_eq!(third.requests().len(), 1);
    assert_eq!(
        released.load(Ordering::SeqCst),
        0,
        "a replaced source is not released"
    );
    drop((blob, again));
    // The refreshed-away source was dropped, not released; removal releases the current one.
    let counting = Counting {
        inner: first.clone(),
        released: released.clone(),
    };
    let other = MemSource::new(bytes(PL as usize, 17));
    let b = s
        .blob(&other.digest(), PL as u64, Arc::new(counting))
        .unwrap();
    drop(b);
    assert!(matches!(
        s.delete_on_request(&other.digest()).unwrap(),
        Deletion::Deleted { .. }
    ));
    assert_eq!(released.load(Ordering::SeqCst), 1);
}

/// A file (not content-addressed) is checked against the content digest a request gives: a
/// match verifies it, a mismatch throws its pieces away (and forgets the digest, which may be
/// the request's mistake), another request's different digest is refused meanwhile, and the
/// digest survives a reopen of the store.
#[tokio::test]
async fn a_file_is_checked_against_the_content_digest_a_request_gives() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(3 * PL as usize + 5, 8);
    let src = MemSource::new(data.clone());
    let good = src.digest();
    let wrong = MemSource::new(bytes(10, 9)).digest();
    let name = format!("task:{}", "c".repeat(64));
    {
        let s = store(dir.path()).await;
        let blob = s
            .blob(&name, data.len() as u64, Arc::new(src.clone()))
            .unwrap();
        assert!(matches!(
            blob.expect_digest("sha256:short"),
            Err(StoreError::InvalidDigest(_))
        ));
        blob.expect_digest(&wrong).unwrap();
        let e = blob.expect_digest(&good).unwrap_err();
        assert!(matches!(e, StoreError::DigestConflict { .. }), "{e}");
        let e = blob.fetch_all(Priority::Background).await.unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!blob.is_verified() && blob.fetched_bytes() < data.len() as u64);

        blob.expect_digest(&good).unwrap();
    }
    let s = store(dir.path()).await;
    let blob = s
        .blob(&name, data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    let e = blob.expect_digest(&wrong).unwrap_err();
    assert!(matches!(e, StoreError::DigestConflict { .. }), "kept: {e}");
    blob.fetch_all(Priority::Background).await.unwrap();
    assert!(blob.is_verified());
    assert_eq!(
        blob.read(0..data.len() as u64, Priority::OnDemand)
            .await
            .unwrap(),
        data
    );
    // A content-addressed blob's digest is its name.
    let oci = s
        .blob(&good, data.len() as u64, Arc::new(src.clone()))
        .unwrap();
    assert!(oci.expect_digest(&good).is_ok() && oci.expect_digest(&wrong).is_err());
}

/// After a restart, the blobs that hold pieces and that no request opened yet are the ones
/// without a source; a source that does not know its origin says so until a refresh.
#[tokio::test]
async fn reloaded_blobs_are_listed_until_a_source_is_attached_and_an_unknown_origin_shows() {
    struct NoOrigin;
    impl crate::RangeSource for NoOrigin {
        fn fetch(
            &self,
            _range: Range<u64>,
            _priority: Priority,
        ) -> futures::future::BoxFuture<'static, Result<bytes::Bytes, crate::SourceError>> {
            Box::pin(async { Err(crate::SourceError::new("no origin".into(), false)) })
        }
        fn origin_known(&self) -> bool {
            false
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(3 * PL as usize, 21);
    let (held, empty) = (
        MemSource::new(data.clone()),
        MemSource::new(bytes(PL as usize, 22)),
    );
    let size = data.len() as u64;
    {
        let s = store(dir.path()).await;
        let blob = s
            .blob(&held.digest(), size, Arc::new(held.clone()))
            .unwrap();
        blob.read(0..1, Priority::OnDemand).await.unwrap();
        s.blob(&empty.digest(), PL as u64, Arc::new(empty.clone()))
            .unwrap();
        assert!(s.without_source().is_empty(), "both have sources");
        s.flush().await.unwrap();
    }
    let s = store(dir.path()).await;
    let listed: Vec<String> = s
        .without_source()
        .iter()
        .map(|b| b.digest().to_owned())
        .collect();
    assert_eq!(listed, vec![held.digest()], "only the blob with pieces");
    let blob = s
        .open_blob(&held.digest(), size, PL, || Arc::new(NoOrigin))
        .unwrap();
    assert!(s.without_source().is_empty());
    assert!(blob.origin_unknown());
    assert_eq!(blob.content_digest(), Some(held.digest()));
    // Present pieces read without a source; a missing one says why it cannot come.
    assert_eq!(
        blob.read(0..1, Priority::OnDemand).await.unwrap(),
        data[..1]
    );
    let e = blob
        .read(2 * PL as u64..2 * PL as u64 + 1, Priority::OnDemand)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no origin"), "{e}");
    blob.refresh_origin(Arc::new(held.clone()));
    assert!(!blob.origin_unknown());
    blob.read(2 * PL as u64..2 * PL as u64 + 1, Priority::OnDemand)
        .await
        .unwrap();
}

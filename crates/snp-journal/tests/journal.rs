//! The journal against a real file system: replay, group commit, compaction, torn tails,
//! the directory lock, adoption.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use snp_journal::{Appended, Entry, Journal, JournalConfig, JournalError, LockError, Orphan};

fn cfg() -> JournalConfig {
    JournalConfig {
        idle: Duration::from_millis(50),
        ..JournalConfig::default()
    }
}

fn set(entries: &[Entry]) -> BTreeSet<Entry> {
    entries.iter().cloned().collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn disk_bytes(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[tokio::test]
async fn appended_entries_are_replayed_after_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let (j, replay) = Journal::open(&dir, cfg()).unwrap();
    assert!(replay.entries.is_empty());
    assert_eq!(
        j.append("default", "greeter", &["org.example.A", "org.example.B"])
            .await
            .unwrap(),
        Appended::Written
    );
    j.append("team-a", "hello", &["org.example.A"])
        .await
        .unwrap();
    j.close();
    drop(j);

    let (j, replay) = Journal::open(&dir, cfg()).unwrap();
    let want = [
        Entry::new("default", "org.example.A", "greeter"),
        Entry::new("default", "org.example.B", "greeter"),
        Entry::new("team-a", "org.example.A", "hello"),
    ];
    assert_eq!(set(&replay.entries), set(&want));
    assert!(replay.torn.is_empty());
    // Replayed entries are live: journaling them again writes nothing.
    let before = j.stats().records;
    assert_eq!(
        j.append("default", "greeter", &["org.example.B"])
            .await
            .unwrap(),
        Appended::Known
    );
    assert_eq!(j.stats().records, before);
    // Opening compacted the old segments into one.
    assert_eq!(segments(&dir).len(), 1);
}

#[tokio::test]
async fn known_entries_cost_no_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(tmp.path(), cfg()).unwrap();
    j.append("ns", "app", &["i.A", "i.B"]).await.unwrap();
    for _ in 0..100 {
        assert_eq!(
            j.append("ns", "app", &["i.B", "i.A"]).await.unwrap(),
            Appended::Known
        );
    }
    let s = j.stats();
    assert_eq!(s.records, 1);
    assert_eq!(s.syncs, 1);
    assert_eq!(s.live_entries, 2);
    // Only the new one of a partly known call is written.
    assert_eq!(
        j.append("ns", "app", &["i.A", "i.C"]).await.unwrap(),
        Appended::Written
    );
    assert_eq!(j.stats().live_entries, 3);
    assert_eq!(j.stats().records, 2);
}

/// Many concurrent appends share few `fdatasync`s: a group is everything that arrived
/// while the previous one was being synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(tmp.path(), cfg()).unwrap();
    let calls = 2000;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..calls {
        let j = j.clone();
        tasks.spawn(async move {
            let iface = format!("org.example.Service{n}");
            j.append("default", "app", &[iface]).await.unwrap()
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), Appended::Written);
    }
    let s = j.stats();
    assert_eq!(s.records, calls);
    assert_eq!(s.live_entries, calls);
    assert!(
        s.syncs * 4 <= calls,
        "{} syncs for {calls} concurrent appends: no group commit",
        s.syncs
    );
    j.close();
    drop(j);
    let (_, replay) = Journal::open(tmp.path(), cfg()).unwrap();
    assert_eq!(replay.entries.len() as u64, calls);
}

/// Syncs in flight at once, compactions between them and forgets racing the appends: every
/// append that returned is replayed unless it was forgotten, whatever the pipeline depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_syncs_with_compactions_lose_nothing() {
    for depth in [1, 4] {
        let tmp = tempfile::tempdir().unwrap();
        let c = JournalConfig {
            rotate_bytes: 4 << 10,
            syncs_in_flight: depth,
            ..cfg()
        };
        let (j, _) = Journal::open(tmp.path(), c.clone()).unwrap();
        let (waves, per_wave) = (30u64, 100u64);
        let calls = waves * per_wave;
        for w in 0..waves {
            let mut tasks = tokio::task::JoinSet::new();
            for n in w * per_wave..(w + 1) * per_wave {
                let j = j.clone();
                tasks.spawn(async move {
                    let iface = format!("org.example.Service{n}");
                    j.append("default", "app", &[iface.as_str()]).await.unwrap();
                    if n % 2 == 0 {
                        j.forget([("default", iface.as_str(), "app")]);
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        }
        let s = j.stats();
        assert_eq!(s.live_entries, calls / 2, "depth {depth}");
        assert!(s.rotations > 1, "depth {depth}: no compaction ran: {s:?}");
        assert!(s.syncs < calls, "depth {depth}: {} syncs", s.syncs);
        let live = set(&j.live());
        j.close();
        drop(j);
        let (_, replay) = Journal::open(tmp.path(), c).unwrap();
        assert_eq!(set(&replay.entries), live, "depth {depth}");
        let want: BTreeSet<Entry> = (0..calls)
            .filter(|n| n % 2 == 1)
            .map(|n| Entry::new("default", &format!("org.example.Service{n}"), "app"))
            .collect();
        assert_eq!(live, want, "depth {depth}");
    }
}

/// Once the store holds everything, the journal shrinks to its header: its size follows
/// the entries not yet stored, not the calls ever made.
#[tokio::test]
async fn forgotten_entries_leave_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let small = JournalConfig {
        rotate_bytes: 16 << 10,
        ..cfg()
    };
    let (j, _) = Journal::open(tmp.path(), small).unwrap();
    // Many rounds of "register, then the store holds it": far more bytes written than
    // the rotation threshold, yet the files stay small.
    for round in 0..200 {
        let ifaces: Vec<String> = (0..20)
            .map(|i| format!("org.example.round{round}.Service{i}"))
            .collect();
        j.append("default", "app", &ifaces).await.unwrap();
        j.forget(ifaces.iter().map(|i| ("default", i.as_str(), "app")));
        assert!(
            disk_bytes(tmp.path()) <= 2 * (16 << 10),
            "round {round}: {} bytes on disk",
            disk_bytes(tmp.path())
        );
    }
    assert!(j.stats().bytes > 10 * (16 << 10));
    assert!(j.stats().rotations > 2);
    // One pending entry stays, across rotations and a reopen.
    j.append("default", "app", &["org.example.Pending"])
        .await
        .unwrap();
    for round in 0..100 {
        let iface = format!("org.example.More{round}");
        j.append("default", "app", &[iface.as_str()]).await.unwrap();
        j.forget([("default", iface.as_str(), "app")]);
    }
    j.close();
    drop(j);
    let (j, replay) = Journal::open(tmp.path(), cfg()).unwrap();
    assert_eq!(
        replay.entries,
        vec![Entry::new("default", "org.example.Pending", "app")]
    );
    // Idle with nothing live: the segment is emptied.
    j.forget([("default", "org.example.Pending", "app")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while disk_bytes(tmp.path()) > 8 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn forget_where_sweeps_what_the_store_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(tmp.path(), cfg()).unwrap();
    j.append("ns", "app", &["a", "b", "c"]).await.unwrap();
    assert_eq!(j.forget_where(|_, i, _| i != "b"), 2);
    assert_eq!(j.live(), vec![Entry::new("ns", "b", "app")]);
    assert!(j.contains([("ns", "b", "app")]));
    assert!(!j.contains([("ns", "a", "app")]));
}

/// A crash can cut the last record anywhere. For every byte offset inside the last
/// record, the journal opens (never refuses), keeps every earlier record, and reports the
/// torn tail.
#[tokio::test]
async fn a_journal_cut_at_every_offset_of_its_last_record_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let (j, _) = Journal::open(&src, cfg()).unwrap();
    j.append("default", "first", &["org.example.One", "org.example.Two"])
        .await
        .unwrap();
    let before_last = disk_bytes(&src);
    j.append("default", "last", &["org.example.Three"])
        .await
        .unwrap();
    // The file as a crash would leave it (read while the journal is open: a clean close
    // compacts it).
    let seg = segments(&src).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    j.close();
    drop(j);
    assert!(bytes.len() as u64 > before_last + 8);
    let first = set(&[
        Entry::new("default", "org.example.One", "first"),
        Entry::new("default", "org.example.Two", "first"),
    ]);
    for cut in before_last as usize..=bytes.len() {
        let dir = tmp.path().join(format!("cut{cut}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(seg.file_name().unwrap()), &bytes[..cut]).unwrap();
        let (j, replay) = Journal::open(&dir, cfg())
            .unwrap_or_else(|e| panic!("cut at {cut}: refused to open: {e}"));
        let got = set(&replay.entries);
        if cut == bytes.len() {
            let mut all = first.clone();
            all.insert(Entry::new("default", "org.example.Three", "last"));
            assert_eq!(got, all);
            assert!(replay.torn.is_empty());
        } else {
            assert_eq!(got, first, "cut at {cut}");
            if cut > before_last as usize {
                assert_eq!(replay.torn.len(), 1, "cut at {cut}");
                assert_eq!(replay.torn[0].offset, before_last);
            }
        }
        // The journal works after a torn tail, and its next replay is clean.
        j.append("default", "after", &["org.example.After"])
            .await
            .unwrap();
        j.close();
        drop(j);
        let (_, again) = Journal::open(&dir, cfg()).unwrap();
        assert!(again.torn.is_empty(), "cut at {cut}: {:?}", again.torn);
        assert!(again
            .entries
            .contains(&Entry::new("default", "org.example.After", "after")));
        assert!(first.iter().all(|e| again.entries.contains(e)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test]
async fn garbage_and_foreign_files_never_stop_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("journal-0000000000000007.log"),
        b"not a journal at all",
    )
    .unwrap();
    std::fs::write(tmp.path().join("journal-0000000000000008.log"), b"").unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"kept").unwrap();
    let (j, replay) = Journal::open(tmp.path(), cfg()).unwrap();
    assert!(replay.entries.is_empty());
    assert_eq!(replay.torn.len(), 1);
    j.append("a", "b", &["c"]).await.unwrap();
    assert!(tmp.path().join("notes.txt").exists());
    assert_eq!(segments(tmp.path()).len(), 1);
}

#[test]
fn a_second_open_of_one_directory_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (_j, _) = Journal::open(tmp.path(), cfg()).unwrap();
    let err = match Journal::open(tmp.path(), cfg()) {
        Err(e) => e,
        Ok(_) => panic!("opened twice"),
    };
    match &err {
        JournalError::Lock(l) => assert!(matches!(**l, LockError::Held { .. }), "{l:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&tmp.path().display().to_string()), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
}

#[tokio::test]
async fn a_gone_journal_is_adopted_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    let (j, _) = Journal::open(&old, cfg()).unwrap();
    j.append("ns", "app", &["a", "b"]).await.unwrap();
    // Held by a live journal: not claimed.
    assert!(Orphan::claim(&old).unwrap().is_none());
    j.close();
    drop(j);
    let orphan = Orphan::claim(&old).unwrap().unwrap();
    assert_eq!(
        set(orphan.entries()),
        set(&[Entry::new("ns", "a", "app"), Entry::new("ns", "b", "app")])
    );
    // Claimed: a second claimer (or a shim starting on it) is kept out meanwhile.
    assert!(Orphan::claim(&old).unwrap().is_none());
    let (mine, _) = Journal::open(&tmp.path().join("mine"), cfg()).unwrap();
    mine.append_entries(orphan.entries().iter().map(Entry::fields))
        .await
        .unwrap();
    orphan.remove().unwrap();
    assert!(!old.exists());
    assert_eq!(mine.live().len(), 2);
}

#[tokio::test]
async fn appends_after_close_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(tmp.path(), cfg()).unwrap();
    j.close();
    assert!(matches!(
        j.append("a", "b", &["c"]).await,
        Err(JournalError::Closed)
    ));
}

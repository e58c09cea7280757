//! The write-ahead log of HTTP ingest: a damaged segment never panics, every entry
//! before the damage reads back exactly, and a log is opened (its torn tail cut off)
//! or refused exactly when the parse says so.

use proptest::prelude::*;

use super::{config, first_difference, mutate, mutations};
use crate::source::wal::{Entry, Wal, parse_segment};

const TOKENS: &[&str] = &["\0\0\0\0", "\u{ff}\u{ff}\u{ff}\u{ff}", "\n", "{}"];

type Request = (u32, u32, Option<String>, Vec<u8>);

fn request() -> impl Strategy<Value = Request> {
    (
        any::<u32>(),
        any::<u32>(),
        prop::option::of(
            prop::collection::vec(prop::sample::select(b"az09-_".to_vec()), 1..20)
                .prop_map(|b| b.into_iter().map(char::from).collect()),
        ),
        prop::collection::vec(any::<u8>(), 0..100),
    )
}

fn same(e: &Entry, r: &Request) -> bool {
    (e.accepted, e.dead_lettered, &e.key, &e.body) == (r.0, r.1, &r.2, &r.3)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_wal_damage_keeps_every_entry_before_it(
        requests in prop::collection::vec(request(), 1..8),
        changes in mutations(TOKENS),
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = Wal::open(dir.path()).expect("open");
        // Idempotency keys are unique in a log (a repeated one is refused, not logged).
        let requests: Vec<Request> = requests
            .into_iter()
            .enumerate()
            .map(|(i, (a, d, key, body))| (a, d, key.map(|k| format!("{k}{i}")), body))
            .collect();
        for (accepted, dead, key, body) in &requests {
            let end = wal.append(*accepted, *dead, key.as_deref(), body, |end| end).expect("append");
            wal.sync_to(end).expect("sync");
        }
        drop(wal);
        let segment = dir.path().join(format!("{:020}.wal", 0));
        let seed = std::fs::read(&segment).expect("segment");
        let damaged = mutate(&seed, &changes);
        let (entries, valid, torn) = parse_segment(&damaged, 0);

        prop_assert!(valid <= damaged.len() as u64);
        prop_assert!(entries.windows(2).all(|w| w[0].end < w[1].end));
        prop_assert!(entries.last().is_none_or(|e| e.end == valid));
        // Entries wholly before the first changed byte are read back exactly.
        let intact = first_difference(&seed, &damaged) as u64;
        let (whole, _, _) = parse_segment(&seed, 0);
        prop_assert_eq!(whole.len(), requests.len());
        for (i, e) in whole.iter().enumerate().take_while(|(_, e)| e.end <= intact) {
            prop_assert!(same(&entries[i], &requests[i]), "entry {} changed: {:?}", i, entries[i].key);
            prop_assert_eq!(entries[i].end, e.end);
        }

        // Opening the log: damage with data after it is refused, a torn tail cut off.
        std::fs::write(&segment, &damaged).expect("write");
        match Wal::open(dir.path()) {
            Ok(wal) => {
                prop_assert!(valid == damaged.len() as u64 || torn);
                let read = wal.read_from(0).expect("reads");
                prop_assert_eq!(read.len(), entries.len());
                prop_assert_eq!(wal.end(), valid);
            }
            Err(e) => {
                prop_assert!(valid != damaged.len() as u64 && !torn, "refused a log it could open: {}", e);
                prop_assert!(e.to_string().contains("damaged"));
            }
        }
    }

    #[test]
    fn fuzz_wal_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let (entries, valid, _) = parse_segment(&bytes, 7);
        prop_assert!(valid >= 7 && valid <= 7 + bytes.len() as u64);
        prop_assert!(entries.iter().all(|e| e.end <= valid));
    }
}

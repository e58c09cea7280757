use super::*;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;

fn config(table: Table, seed: u64) -> GeneratorConfig {
    GeneratorConfig {
        table,
        seed,
        events: Some(5_000),
        event_rate: 1_000,
        start_time_ms: 0,
    }
}

fn all(table: Table, seed: u64) -> Vec<RecordBatch> {
    let mut g = Generator::new(config(table, seed));
    std::iter::from_fn(|| g.next_batch(777)).collect()
}

#[test]
fn event_mix_is_1_3_46_and_finite_runs_end() {
    let rows = |t| all(t, 1).iter().map(RecordBatch::num_rows).sum::<usize>();
    assert_eq!(
        (rows(Table::Person), rows(Table::Auction), rows(Table::Bid)),
        (100, 300, 4_600)
    );
}

#[test]
fn rows_in_counts_what_the_generator_makes() {
    for events in [0, 1, 3, 4, 49, 5_023] {
        for table in [Table::Person, Table::Auction, Table::Bid] {
            let mut g = Generator::new(GeneratorConfig {
                events: Some(events),
                ..config(table, 1)
            });
            let made: usize = std::iter::from_fn(|| g.next_batch(777))
                .map(|b| b.num_rows())
                .sum();
            assert_eq!(table.rows_in(events), made as u64, "{table:?} in {events}");
        }
    }
}

/// Left out when no view reads it, `extra` is empty and every other column the same.
#[test]
fn rows_without_extra_differ_only_in_extra() {
    for table in [Table::Person, Table::Auction, Table::Bid] {
        let mut g = Generator::new(config(table, 3));
        let width = table.schema().fields().len();
        let wanted = decode::Columns::of([0]);
        let lean: Vec<RecordBatch> = std::iter::from_fn(|| g.next_batch_of(777, wanted))
            .map(|(batch, made)| {
                assert_eq!(made, decode::Columns::of(0..width - 1));
                batch
            })
            .collect();
        let whole = all(table, 3);
        assert_eq!(lean.len(), whole.len());
        for (lean, whole) in lean.iter().zip(&whole) {
            assert_eq!(lean.columns()[..width - 1], whole.columns()[..width - 1]);
            let extra = lean.column(width - 1).as_string::<i32>();
            assert!(extra.iter().all(|e| e == Some("")), "{table:?}");
            let whole_extra = whole.column(width - 1).as_string::<i32>();
            assert!(whole_extra.iter().any(|e| e.is_some_and(|e| !e.is_empty())));
        }
    }
}

#[test]
fn same_seed_same_rows_other_seed_other_rows() {
    assert_eq!(all(Table::Bid, 7), all(Table::Bid, 7));
    assert_ne!(all(Table::Bid, 7), all(Table::Bid, 8));
}

#[test]
fn ids_follow_the_benchmark_rules() {
    let auctions = all(Table::Auction, 1);
    let ids: Vec<i64> = auctions
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(
        &ids[..4],
        &[1000, 1001, 1002, 1003],
        "auction ids are dense and in order"
    );
    let bids = all(Table::Bid, 1);
    let max_auction = *ids.last().expect("auctions");
    for b in &bids {
        for &a in b.column(0).as_primitive::<Int64Type>().values() {
            assert!(
                (FIRST_AUCTION_ID..=max_auction + AUCTION_ID_LEAD as i64).contains(&a),
                "bid on auction {a}"
            );
        }
    }
    // Hot auctions: half the bids go to a multiple of 100 above the first id.
    let hot = bids
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .filter(|a| (a - FIRST_AUCTION_ID) % 100 == 0)
        .count();
    assert!(
        hot > 4_600 * 4 / 10,
        "hot auctions get about half the bids, got {hot}"
    );
    // Event time advances at event_rate: event 4999 at ~4.999 s.
    let g = Generator::new(config(Table::Bid, 1));
    assert_eq!(g.timestamp(4_999), 4_999);
}

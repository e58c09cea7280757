//! Keyed parallelism for aggregates: a state split into shards by a hash of the group
//! key, the shards worked on side by side (rayon's pool and the calling thread, see
//! [`crate::parallel`]). A group lives in exactly
//! one shard, so shards never merge; what they emit is put side by side. Checkpoints
//! hold the shards' rows together in the serial form and a restore routes them again by
//! key, so a checkpoint taken at one parallelism restores at any other.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::common::hash_utils::{RandomState, create_hashes};

use super::Prepared;
use crate::Result;
use crate::parallel::lock;

/// The hash that routes keys to shards. Its seed differs from the one DataFusion's
/// group tables use, so the keys of one shard still spread over its table's buckets.
const ROUTING: RandomState = RandomState::with_seed(0x7765_6972_5f73_6864);

/// Routes rows to `shards` shards by a hash of their keys.
#[derive(Debug)]
pub struct Router {
    shards: usize,
    /// Scratch: each row's hash.
    hashes: Vec<u64>,
}

impl Router {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: shards.max(1),
            hashes: Vec::new(),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// For each shard, the rows (in order) of the `rows` rows with keys `keys` that
    /// belong to it. Without keys (one global group) every row goes to shard 0.
    pub fn route(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<UInt32Array>> {
        let n = self.shards;
        let mut parts: Vec<Vec<u32>> = vec![Vec::with_capacity(rows / n + rows / 8); n];
        if keys.is_empty() {
            parts[0].extend(0..rows as u32);
        } else {
            self.hashes.clear();
            self.hashes.resize(rows, 0);
            create_hashes(keys, &ROUTING, &mut self.hashes)?;
            for (row, &hash) in self.hashes.iter().enumerate() {
                parts[shard_of(hash, n)].push(row as u32);
            }
        }
        Ok(parts.into_iter().map(UInt32Array::from).collect())
    }
}

/// The shard of a hash: its high bits scaled to `n` (no division).
fn shard_of(hash: u64, n: usize) -> usize {
    (((hash >> 32) * n as u64) >> 32) as usize
}

/// The rows `rows` (ascending, as [`Router::route`] gives them) of each column: the
/// columns themselves when that is all of them.
pub fn take_rows(columns: &[ArrayRef], rows: &UInt32Array) -> Result<Vec<ArrayRef>> {
    if columns.first().is_some_and(|c| c.len() == rows.len()) {
        return Ok(columns.to_vec());
    }
    Ok(columns
        .iter()
        .map(|c| take(c, rows, None))
        .collect::<std::result::Result<_, _>>()?)
}

impl Prepared {
    /// The prepared rows split by shard (`None` where a shard gets no row).
    pub(crate) fn route(&self, router: &mut Router) -> Result<Vec<Option<Prepared>>> {
        let rows = self.rows;
        let parts = router.route(&self.keys, rows)?;
        parts
            .iter()
            .map(|part| {
                if part.is_empty() {
                    return Ok(None);
                }
                let arguments = self
                    .arguments
                    .iter()
                    .map(|(values, filter)| {
                        let filter = match filter {
                            Some(f) => Some(take_boolean(f, part)?),
                            None => None,
                        };
                        Ok((take_rows(values, part)?, filter))
                    })
                    .collect::<Result<_>>()?;
                Ok(Some(Prepared {
                    keys: take_rows(&self.keys, part)?,
                    arguments,
                    rows: part.len(),
                }))
            })
            .collect()
    }
}

fn take_boolean(filter: &BooleanArray, rows: &UInt32Array) -> Result<BooleanArray> {
    if filter.len() == rows.len() {
        return Ok(filter.clone());
    }
    let taken = datafusion::arrow::compute::take(filter, rows, None)?;
    Ok(datafusion::arrow::array::AsArray::as_boolean(&taken).clone())
}

/// `f` on each shard with its part, on as many cores as there are shards (in the
/// calling thread when there is one shard; see [`crate::parallel`]). Results in shard
/// order; every shard runs, and the first failure in shard order is returned.
pub fn each_shard<S, P, R>(
    shards: &mut [S],
    parts: Vec<P>,
    f: impl Fn(&mut S, P) -> Result<R> + Sync + Send,
) -> Result<Vec<R>>
where
    S: Send,
    P: Send,
    R: Send,
{
    let jobs: Vec<(&mut S, P)> = shards.iter_mut().zip(parts).collect();
    crate::parallel::run_parts(jobs, |(shard, part)| f(shard, part))
        .into_iter()
        .collect()
}

/// [`each_shard`] for shards the work holds a share of: the calling thread runs every
/// shard no worker has started and waits only for those a worker is running, not for
/// a worker busy decoding to take a job it has nothing left to do in
/// ([`crate::parallel::run_owned`]).
pub fn each_owned_shard<S, P, R>(
    shards: &[Arc<Mutex<S>>],
    parts: Vec<P>,
    f: impl Fn(&mut S, P) -> Result<R> + Send + Sync + 'static,
) -> Result<Vec<R>>
where
    S: Send + 'static,
    P: Send + 'static,
    R: Send + 'static,
{
    let jobs: Vec<(Arc<Mutex<S>>, P)> = shards.iter().cloned().zip(parts).collect();
    let run = move |(shard, part): (Arc<Mutex<S>>, P)| f(&mut lock(&shard), part);
    crate::parallel::run_owned(jobs, Arc::new(run))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, StringArray};

    use super::*;

    /// Whoever runs a shard (a worker, or the calling thread taking the ones not
    /// started), each gets its own part once and the results come in shard order.
    #[test]
    fn each_shard_runs_every_shard_once_with_its_part_and_keeps_their_order() -> Result<()> {
        for round in 0..50 {
            let mut shards: Vec<Vec<usize>> = vec![Vec::new(); 7];
            let parts: Vec<usize> = (0..7).map(|i| i * 10 + round).collect();
            let got = each_shard(&mut shards, parts, |shard, part| {
                shard.push(part);
                Ok(part * 2)
            })?;
            assert_eq!(
                got,
                (0..7).map(|i| (i * 10 + round) * 2).collect::<Vec<_>>()
            );
            for (i, shard) in shards.iter().enumerate() {
                assert_eq!(shard, &vec![i * 10 + round], "shard {i} ran once");
            }
        }
        // A shard's failure is the call's, whichever shard fails.
        let mut shards = vec![0; 4];
        let failed = each_shard(&mut shards, vec![0, 1, 2, 3], |shard, part| {
            *shard += 1;
            if part == 2 {
                return Err(crate::Error::Execution("shard 2 fails".into()));
            }
            Ok(part)
        });
        assert!(failed.is_err_and(|e| e.to_string().contains("shard 2 fails")));
        assert_eq!(shards, vec![1; 4], "the other shards still ran");
        Ok(())
    }

    /// The same for shards the work holds a share of.
    #[test]
    fn each_owned_shard_runs_every_shard_once_with_its_part_and_keeps_their_order() -> Result<()> {
        for round in 0..50 {
            let shards: Vec<Arc<Mutex<Vec<usize>>>> =
                (0..7).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
            let parts: Vec<usize> = (0..7).map(|i| i * 10 + round).collect();
            let got = each_owned_shard(&shards, parts, |shard, part| {
                shard.push(part);
                Ok(part * 2)
            })?;
            assert_eq!(
                got,
                (0..7).map(|i| (i * 10 + round) * 2).collect::<Vec<_>>()
            );
            for (i, shard) in shards.iter().enumerate() {
                assert_eq!(*lock(shard), vec![i * 10 + round], "shard {i} ran once");
            }
        }
        let shards: Vec<Arc<Mutex<usize>>> = (0..4).map(|_| Arc::new(Mutex::new(0))).collect();
        let failed = each_owned_shard(&shards, vec![0, 1, 2, 3], |shard, part| {
            *shard += 1;
            if part == 2 {
                return Err(crate::Error::Execution("shard 2 fails".into()));
            }
            Ok(part)
        });
        assert!(failed.is_err_and(|e| e.to_string().contains("shard 2 fails")));
        let ran: Vec<usize> = shards.iter().map(|s| *lock(s)).collect();
        assert_eq!(ran, vec![1; 4], "the other shards still ran");
        Ok(())
    }

    #[test]
    fn a_key_always_goes_to_the_same_shard_and_every_row_somewhere() -> Result<()> {
        let keys: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(
                (0..1000).map(|i| i % 97).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                (0..1000)
                    .map(|i| format!("k{}", i % 97))
                    .collect::<Vec<_>>(),
            )),
        ];
        let mut router = Router::new(3);
        let parts = router.route(&keys, 1000)?;
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 1000);
        let mut shard_of_key = std::collections::HashMap::new();
        for (shard, part) in parts.iter().enumerate() {
            assert!(part.len() > 150, "shards are roughly even: {}", part.len());
            for row in part.values() {
                let key = *row % 97;
                assert_eq!(*shard_of_key.entry(key).or_insert(shard), shard);
            }
        }
        // The same keys in another batch land where they did.
        let again = router.route(&[keys[0].slice(10, 5), keys[1].slice(10, 5)], 5)?;
        for (shard, part) in again.iter().enumerate() {
            for row in part.values() {
                assert_eq!(shard_of_key[&((row + 10) % 97)], shard);
            }
        }
        // Without keys, one shard takes everything.
        let global = router.route(&[], 4)?;
        assert_eq!(global[0].len(), 4);
        assert!(global[1].is_empty() && global[2].is_empty());
        Ok(())
    }
}

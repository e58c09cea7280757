//! A column of fixed-width values (integers, floats, timestamps, decimals) kept in place
//! by id: a write overwrites each id's slot and a read gathers the ids' slots, one
//! memory access per value, however many ids are held.
//!
//! (Keeping an id's columns together as one row, so that a touched id costs one cache
//! line, measured slower: 1.4 against 2.3 M rows/s over 10 million groups in the
//! `updating` benchmark.)

use datafusion::arrow::array::{Array, ArrayData, ArrayRef, make_array};
use datafusion::arrow::buffer::{BooleanBuffer, MutableBuffer, NullBuffer};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::bit_util;

use crate::{Error, Result};

pub(super) struct FixedColumn {
    data_type: DataType,
    /// Bytes per value.
    width: usize,
    /// Slot `id` holds the id's value; a slot never written holds zero. A plain `Vec`,
    /// not Arrow's 64-byte aligned buffer: growing that copies every slot into a new
    /// allocation, where glibc moves a large (memory-mapped) `Vec`'s pages without
    /// copying them (12% of a run over 9 million groups went to the copies and their
    /// page faults).
    values: Vec<u8>,
    /// Each slot's validity (a bit per slot), kept only once a null has been written:
    /// until then every slot is valid.
    valid: Option<Vec<u8>>,
}

impl FixedColumn {
    /// The column for values of `data_type`, or `None` if their width varies.
    pub(super) fn new(data_type: &DataType) -> Option<Self> {
        let width = data_type.primitive_width()?;
        Some(Self {
            data_type: data_type.clone(),
            width,
            values: Vec::new(),
            valid: None,
        })
    }

    fn slots(&self) -> usize {
        self.values.len() / self.width
    }

    /// Make room for ids below `slots`.
    pub(super) fn grow(&mut self, slots: usize) {
        if slots <= self.slots() {
            return;
        }
        self.values.resize(slots * self.width, 0);
        if let Some(valid) = &mut self.valid {
            grow_bits(valid, slots);
        }
    }

    /// Row `i` of `array` becomes the value of `ids[i]` (ids below [`Self::grow`]'s; the
    /// array of this column's type and of `ids`' length, as `KeyedRows::set` checks).
    pub(super) fn write(&mut self, ids: &[u32], array: &dyn Array) -> Result<()> {
        let data = array.to_data();
        // As bytes: an input buffer is aligned for its own type (an interval's to 4 or 8
        // bytes), not necessarily for the integer of the same width; fixed-size copies
        // compile to plain moves all the same.
        let values = &data.buffers()[0].as_slice()[data.offset() * self.width..];
        let slots = self.values.as_mut_slice();
        match self.width {
            1 => scatter::<1>(slots, values, ids),
            2 => scatter::<2>(slots, values, ids),
            4 => scatter::<4>(slots, values, ids),
            8 => scatter::<8>(slots, values, ids),
            16 => scatter::<16>(slots, values, ids),
            32 => scatter::<32>(slots, values, ids),
            w => return Err(Error::Execution(format!("no values {w} bytes wide"))),
        }
        if array.null_count() > 0 && self.valid.is_none() {
            let mut valid = Vec::new();
            grow_bits(&mut valid, self.slots());
            self.valid = Some(valid);
        }
        if let Some(valid) = &mut self.valid {
            let valid = valid.as_mut_slice();
            for (i, &id) in ids.iter().enumerate() {
                if array.is_valid(i) {
                    bit_util::set_bit(valid, id as usize);
                } else {
                    bit_util::unset_bit(valid, id as usize);
                }
            }
        }
        Ok(())
    }

    /// The values of `ids`, in their order (ids written before).
    pub(super) fn read(&self, ids: &[u32]) -> Result<ArrayRef> {
        let mut values = MutableBuffer::from_len_zeroed(ids.len() * self.width);
        let (slots, out) = (self.values.as_slice(), values.as_slice_mut());
        match self.width {
            1 => gather::<1>(slots, ids, out),
            2 => gather::<2>(slots, ids, out),
            4 => gather::<4>(slots, ids, out),
            8 => gather::<8>(slots, ids, out),
            16 => gather::<16>(slots, ids, out),
            32 => gather::<32>(slots, ids, out),
            w => return Err(Error::Execution(format!("no values {w} bytes wide"))),
        }
        let nulls = self.valid.as_ref().map(|valid| {
            let valid = valid.as_slice();
            NullBuffer::new(BooleanBuffer::collect_bool(ids.len(), |i| {
                bit_util::get_bit(valid, ids[i] as usize)
            }))
        });
        let data = ArrayData::builder(self.data_type.clone())
            .len(ids.len())
            .add_buffer(values.into())
            .nulls(nulls.filter(|n| n.null_count() > 0))
            .build()?;
        Ok(make_array(data))
    }

    /// Bytes held.
    pub(super) fn size(&self) -> usize {
        self.values.capacity() + self.valid.as_ref().map_or(0, |v| v.capacity())
    }
}

/// Extend a validity bitmap to `slots` bits, the new ones set (whole bytes are added
/// set, so bits past the slots in use are set too).
fn grow_bits(bits: &mut Vec<u8>, slots: usize) {
    bits.resize(bit_util::ceil(slots, 8), 0xFF);
}

/// Value `i` of `values` (`W` bytes each) into slot `ids[i]`.
fn scatter<const W: usize>(slots: &mut [u8], values: &[u8], ids: &[u32]) {
    for (&id, value) in ids.iter().zip(values.chunks_exact(W)) {
        let at = id as usize * W;
        slots[at..at + W].copy_from_slice(value);
    }
}

/// Slots `ids` into `out`, in order (`W` bytes each).
fn gather<const W: usize>(slots: &[u8], ids: &[u32], out: &mut [u8]) {
    for (&id, value) in ids.iter().zip(out.chunks_exact_mut(W)) {
        let at = id as usize * W;
        value.copy_from_slice(&slots[at..at + W]);
    }
}

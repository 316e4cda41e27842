//! qcow2 metadata: the L1 table, a cache of L2 tables and refcount blocks, cluster
//! allocation at the end of the file, and the ordered write-back that makes it durable.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::corrupt;
use super::header::{Header, OFF_AUTOCLEAR, OFF_REFCOUNT_TABLE};

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const RT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Refcount is exactly 1: the cluster may be written in place.
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// Version 3: the cluster reads as zeros.
const ZERO: u64 = 1;
/// Host offsets must fit the 56-bit fields of table entries.
const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Cached tables beyond this many bytes: the clean ones are dropped.
const CACHE_LIMIT: u64 = 32 << 20;
/// Dirty tables beyond this many bytes are written back without waiting for a flush.
const DIRTY_LIMIT: u64 = 8 << 20;
/// Pending frees beyond this many are applied without waiting for a flush.
const FREES_LIMIT: usize = 4096;
/// How many in-use clusters past the end of the file allocation skips before giving up.
const MAX_ALLOC_SKIP: u32 = 1 << 16;

/// What a guest cluster is, from its L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cluster {
    /// Reads from the backing image, or zeros.
    Unallocated,
    /// Reads as zeros; may keep its host cluster for reuse.
    Zero { host: Option<u64> },
    /// Data at this host offset, refcount 1.
    Data(u64),
    /// Deflate data; the raw L2 entry describes where.
    Compressed(u64),
}

struct Cached<T> {
    v: T,
    dirty: bool,
}

pub(super) struct Metadata {
    file: File,
    read_only: bool,
    version: u32,
    cluster_bits: u32,
    refcount_order: u32,
    l1: Vec<u64>,
    l1_offset: u64,
    l1_dirty: BTreeSet<usize>,
    l2: HashMap<u64, Cached<Vec<u64>>>,
    /// Refcount table (loaded for writable images only).
    rt: Vec<u64>,
    rt_offset: u64,
    rt_clusters: u64,
    rt_dirty: bool,
    /// The refcount table moved: the header must point at the new one.
    rt_moved: bool,
    rb: HashMap<u64, Cached<Vec<u8>>>,
    /// Next cluster to allocate.
    end: u64,
    /// Host byte ranges whose clusters lose one reference once the tables that referred to
    /// them are durable.
    frees: Vec<(u64, u64)>,
}

fn read_table(file: &File, offset: u64, bytes: u64) -> io::Result<Vec<u64>> {
    let mut raw = vec![0u8; bytes as usize];
    file.read_exact_at(&mut raw, offset)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect())
}

fn encode(table: &[u64]) -> Vec<u8> {
    table.iter().flat_map(|e| e.to_be_bytes()).collect()
}

fn get_refcount(block: &[u8], i: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let (byte, shift) = ((i * bits) / 8, (i * bits) % 8);
            u64::from((block[byte] >> shift) & ((1u16 << bits) - 1) as u8)
        }
        3 => u64::from(block[i]),
        _ => {
            let w = 1usize << (order - 3);
            block[i * w..i * w + w]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }
    }
}

fn set_refcount_in(block: &mut [u8], i: usize, order: u32, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let (byte, shift) = ((i * bits) / 8, (i * bits) % 8);
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            block[byte] = (block[byte] & !mask) | (((v as u8) << shift) & mask);
        }
        3 => block[i] = v as u8,
        _ => {
            let w = 1usize << (order - 3);
            let be = v.to_be_bytes();
            block[i * w..i * w + w].copy_from_slice(&be[8 - w..]);
        }
    }
}

impl Metadata {
    pub(super) fn load(file: File, h: &Header, file_len: u64, read_only: bool) -> io::Result<Self> {
        let cs = 1u64 << h.cluster_bits;
        let l1 = read_table(&file, h.l1_table_offset, u64::from(h.l1_size) * 8)?;
        let rt_clusters = u64::from(h.refcount_table_clusters);
        let rt = if read_only {
            Vec::new()
        } else {
            read_table(&file, h.refcount_table_offset, rt_clusters * cs)?
        };
        if !read_only && h.autoclear_features != 0 {
            // Autoclear features (bitmaps, ...) kapsel does not keep up to date: clear
            // them, as the format asks of a writer that does not know them.
            file.write_all_at(&0u64.to_be_bytes(), OFF_AUTOCLEAR)?;
            file.sync_data()?;
        }
        Ok(Metadata {
            file,
            read_only,
            version: h.version,
            cluster_bits: h.cluster_bits,
            refcount_order: h.refcount_order,
            l1,
            l1_offset: h.l1_table_offset,
            l1_dirty: BTreeSet::new(),
            l2: HashMap::new(),
            rt,
            rt_offset: h.refcount_table_offset,
            rt_clusters,
            rt_dirty: false,
            rt_moved: false,
            rb: HashMap::new(),
            end: file_len.div_ceil(cs) * cs,
            frees: Vec::new(),
        })
    }

    pub(super) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    pub(super) fn has_zero_flag(&self) -> bool {
        self.version >= 3
    }

    fn check_cluster_offset(&self, off: u64, what: &str) -> io::Result<u64> {
        if !off.is_multiple_of(self.cluster_size()) || off >= MAX_HOST_OFFSET {
            return Err(corrupt(format!("{what} offset 0x{off:x} is not a cluster")));
        }
        Ok(off)
    }

    fn indexes(&self, guest: u64) -> (usize, usize) {
        let l2_bits = self.cluster_bits - 3;
        let l1i = (guest >> (self.cluster_bits + l2_bits)) as usize;
        let l2i = ((guest >> self.cluster_bits) & (self.l2_entries() - 1)) as usize;
        (l1i, l2i)
    }

    fn trim_cache(&mut self) {
        let cached = (self.l2.len() + self.rb.len()) as u64 * self.cluster_size();
        if cached > CACHE_LIMIT {
            self.l2.retain(|_, t| t.dirty);
            self.rb.retain(|_, t| t.dirty);
        }
    }

    fn load_l2(&mut self, off: u64) -> io::Result<&mut Cached<Vec<u64>>> {
        if !self.l2.contains_key(&off) {
            self.check_cluster_offset(off, "L2 table")?;
            let v = read_table(&self.file, off, self.cluster_size())
                .map_err(|e| corrupt(format!("L2 table at 0x{off:x}: {e}")))?;
            self.trim_cache();
            self.l2.insert(off, Cached { v, dirty: false });
        }
        self.l2
            .get_mut(&off)
            .ok_or_else(|| corrupt("L2 cache lost a table"))
    }

    fn load_rb(&mut self, off: u64) -> io::Result<&mut Cached<Vec<u8>>> {
        if !self.rb.contains_key(&off) {
            self.check_cluster_offset(off, "refcount block")?;
            let mut v = vec![0u8; self.cluster_size() as usize];
            self.file
                .read_exact_at(&mut v, off)
                .map_err(|e| corrupt(format!("refcount block at 0x{off:x}: {e}")))?;
            self.trim_cache();
            self.rb.insert(off, Cached { v, dirty: false });
        }
        self.rb
            .get_mut(&off)
            .ok_or_else(|| corrupt("refcount cache lost a block"))
    }

    /// What the guest cluster holding `guest` is.
    pub(super) fn lookup(&mut self, guest: u64) -> io::Result<Cluster> {
        let (l1i, l2i) = self.indexes(guest);
        let l1e = *self
            .l1
            .get(l1i)
            .ok_or_else(|| corrupt("offset beyond the L1 table"))?;
        let l2off = l1e & L1_OFFSET_MASK;
        if l2off == 0 {
            return Ok(Cluster::Unallocated);
        }
        let e = self.load_l2(l2off)?.v[l2i];
        self.classify(e)
    }

    fn classify(&self, e: u64) -> io::Result<Cluster> {
        if e & COMPRESSED != 0 {
            return Ok(Cluster::Compressed(e));
        }
        let host = e & L2_OFFSET_MASK;
        if host != 0 {
            self.check_cluster_offset(host, "data cluster")?;
            if !self.read_only && e & COPIED == 0 {
                return Err(corrupt(format!(
                    "data cluster 0x{host:x} is shared (COPIED flag clear); kapsel does not \
                     write images with internal snapshots"
                )));
            }
        }
        if self.has_zero_flag() && e & ZERO != 0 {
            return Ok(Cluster::Zero {
                host: (host != 0).then_some(host),
            });
        }
        Ok(if host == 0 {
            Cluster::Unallocated
        } else {
            Cluster::Data(host)
        })
    }

    /// Reads host bytes; the part past the end of the file reads as zeros.
    pub(super) fn read_data(&self, buf: &mut [u8], host: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], host + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) fn write_data(&self, buf: &[u8], host: u64) -> io::Result<()> {
        self.file.write_all_at(buf, host)
    }

    /// Inflates the compressed cluster an L2 entry describes.
    pub(super) fn inflate(&self, entry: u64) -> io::Result<Vec<u8>> {
        use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
        use miniz_oxide::inflate::TINFLStatus;
        let (host, len) = self.compressed_range(entry);
        let skip = (host & 511) as usize;
        let mut input = vec![0u8; len as usize];
        self.read_data(&mut input, host & !511)?;
        let mut out = vec![0u8; self.cluster_size() as usize];
        let mut d = Box::<DecompressorOxide>::default();
        let (status, _, n) = decompress(
            &mut d,
            &input[skip..],
            &mut out,
            0,
            inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        let ok = matches!(
            status,
            TINFLStatus::Done | TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput
        );
        if !ok || n != out.len() {
            return Err(corrupt(format!(
                "compressed cluster at 0x{host:x} does not inflate to one cluster"
            )));
        }
        Ok(out)
    }

    /// Host bytes a compressed cluster's entry covers: (offset, length from the start of
    /// the offset's 512-byte sector).
    fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let x = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry >> x) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
        (host, sectors * 512)
    }

    /// The compressed cluster is no longer referenced: its host clusters lose one reference
    /// once the new L2 entry is durable.
    pub(super) fn free_compressed(&mut self, entry: u64) {
        let (host, len) = self.compressed_range(entry);
        self.frees.push((host & !511, len));
    }

    /// Releases a host cluster's storage (its L2 entry now says zero).
    pub(super) fn punch(&self, host: u64) {
        // SAFETY: fallocate on an owned fd with plain integer arguments.
        let _ = unsafe {
            libc::fallocate64(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                host as libc::off64_t,
                self.cluster_size() as libc::off64_t,
            )
        };
    }

    /// The L2 table for `guest`, allocated if there is none yet.
    fn ensure_l2(&mut self, guest: u64) -> io::Result<u64> {
        let (l1i, _) = self.indexes(guest);
        let l1e = *self
            .l1
            .get(l1i)
            .ok_or_else(|| corrupt("offset beyond the L1 table"))?;
        let off = l1e & L1_OFFSET_MASK;
        if off != 0 {
            if l1e & COPIED == 0 {
                return Err(corrupt(
                    "L2 table is shared (COPIED flag clear); kapsel does not write images \
                     with internal snapshots",
                ));
            }
            self.load_l2(off)?;
            return Ok(off);
        }
        let new = self.allocate_cluster()?;
        self.trim_cache();
        let v = vec![0u64; self.l2_entries() as usize];
        self.l2.insert(new, Cached { v, dirty: true });
        self.l1[l1i] = new | COPIED;
        self.l1_dirty.insert(l1i);
        Ok(new)
    }

    fn set_l2_entry(&mut self, guest: u64, entry: u64) -> io::Result<()> {
        let off = self.ensure_l2(guest)?;
        let (_, l2i) = self.indexes(guest);
        let t = self.load_l2(off)?;
        t.v[l2i] = entry;
        t.dirty = true;
        Ok(())
    }

    /// Points the guest cluster at a host cluster of its own.
    pub(super) fn set_data(&mut self, guest: u64, host: u64) -> io::Result<()> {
        self.set_l2_entry(guest, host | COPIED)
    }

    /// Makes the guest cluster read as zeros, keeping `host` allocated to it if given.
    pub(super) fn set_zero(&mut self, guest: u64, host: Option<u64>) -> io::Result<()> {
        self.set_l2_entry(guest, ZERO | host.map_or(0, |h| h | COPIED))
    }

    fn rc_index(&self, host: u64) -> (usize, usize) {
        let entries_bits = self.cluster_bits + 3 - self.refcount_order;
        let idx = host >> self.cluster_bits;
        (
            (idx >> entries_bits) as usize,
            (idx & ((1u64 << entries_bits) - 1)) as usize,
        )
    }

    fn refcount(&mut self, host: u64) -> io::Result<u64> {
        let (bi, ri) = self.rc_index(host);
        let Some(&rte) = self.rt.get(bi) else {
            return Ok(0);
        };
        let rbo = rte & RT_OFFSET_MASK;
        if rbo == 0 {
            return Ok(0);
        }
        let order = self.refcount_order;
        Ok(get_refcount(&self.load_rb(rbo)?.v, ri, order))
    }

    fn set_refcount(&mut self, host: u64, value: u64, depth: u32) -> io::Result<()> {
        if depth > 8 {
            return Err(corrupt("refcount structure does not converge"));
        }
        let (bi, ri) = self.rc_index(host);
        if bi >= self.rt.len() {
            self.grow_refcount_table(bi + 1, depth)?;
        }
        let mut rbo = self.rt[bi] & RT_OFFSET_MASK;
        if rbo == 0 {
            rbo = self.take_end()?;
            self.trim_cache();
            let v = vec![0u8; self.cluster_size() as usize];
            self.rb.insert(rbo, Cached { v, dirty: true });
            self.rt[bi] = rbo;
            self.rt_dirty = true;
            self.set_refcount(rbo, 1, depth + 1)?;
        }
        let order = self.refcount_order;
        let b = self.load_rb(rbo)?;
        set_refcount_in(&mut b.v, ri, order, value);
        b.dirty = true;
        Ok(())
    }

    /// Replaces the refcount table by a larger one at the end of the file.
    fn grow_refcount_table(&mut self, min_entries: usize, depth: u32) -> io::Result<()> {
        let cs = self.cluster_size();
        let per_cluster = (cs / 8) as usize;
        let want = min_entries.max(self.rt.len() * 2) + per_cluster;
        let clusters = want.div_ceil(per_cluster) as u64;
        if clusters * cs > super::MAX_REFTABLE_BYTES {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let old = (self.rt_offset, self.rt_clusters);
        let new_off = self.end;
        for _ in 0..clusters {
            self.take_end()?;
        }
        self.rt.resize(clusters as usize * per_cluster, 0);
        self.rt_offset = new_off;
        self.rt_clusters = clusters;
        self.rt_dirty = true;
        self.rt_moved = true;
        for i in 0..clusters {
            self.set_refcount(new_off + i * cs, 1, depth + 1)?;
        }
        self.frees.push((old.0, old.1 * cs));
        Ok(())
    }

    fn take_end(&mut self) -> io::Result<u64> {
        let off = self.end;
        let cs = self.cluster_size();
        if off + cs > MAX_HOST_OFFSET {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.end += cs;
        Ok(off)
    }

    /// A free host cluster with refcount 1.
    pub(super) fn allocate_cluster(&mut self) -> io::Result<u64> {
        for _ in 0..MAX_ALLOC_SKIP {
            let off = self.take_end()?;
            if self.refcount(off)? == 0 {
                self.set_refcount(off, 1, 0)?;
                return Ok(off);
            }
        }
        Err(corrupt(
            "refcounts claim every cluster past the end of the file",
        ))
    }

    /// Writes the cache back early when it holds much.
    pub(super) fn maybe_write_back(&mut self) -> io::Result<()> {
        let dirty = self.l2.values().filter(|t| t.dirty).count()
            + self.rb.values().filter(|t| t.dirty).count();
        if dirty as u64 * self.cluster_size() > DIRTY_LIMIT || self.frees.len() > FREES_LIMIT {
            self.write_back()
        } else {
            Ok(())
        }
    }

    fn write_refcounts(&mut self) -> io::Result<()> {
        for (off, b) in self.rb.iter_mut().filter(|(_, b)| b.dirty) {
            self.file.write_all_at(&b.v, *off)?;
        }
        if self.rt_dirty {
            self.file.write_all_at(&encode(&self.rt), self.rt_offset)?;
        }
        Ok(())
    }

    fn mark_refcounts_clean(&mut self) {
        self.rb.values_mut().for_each(|b| b.dirty = false);
        self.rt_dirty = false;
    }

    /// Makes everything durable, in an order a crash cannot corrupt: guest data and
    /// refcounts, then the header's refcount table pointer, then L2 tables, then L1
    /// entries, then the refcount decrements of clusters no table refers to any more.
    pub(super) fn write_back(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.write_refcounts()?;
        self.file.sync_data()?;
        self.mark_refcounts_clean();
        if self.rt_moved {
            let mut b = self.rt_offset.to_be_bytes().to_vec();
            b.extend_from_slice(&(self.rt_clusters as u32).to_be_bytes());
            self.file.write_all_at(&b, OFF_REFCOUNT_TABLE)?;
            self.file.sync_data()?;
            self.rt_moved = false;
        }
        if self.l2.values().any(|t| t.dirty) {
            for (off, t) in self.l2.iter().filter(|(_, t)| t.dirty) {
                self.file.write_all_at(&encode(&t.v), *off)?;
            }
            self.file.sync_data()?;
            self.l2.values_mut().for_each(|t| t.dirty = false);
        }
        if !self.l1_dirty.is_empty() {
            for &i in &self.l1_dirty {
                self.file
                    .write_all_at(&self.l1[i].to_be_bytes(), self.l1_offset + i as u64 * 8)?;
            }
            self.file.sync_data()?;
            self.l1_dirty.clear();
        }
        if !self.frees.is_empty() {
            let cs = self.cluster_size();
            for (start, len) in std::mem::take(&mut self.frees) {
                let mut c = start & !(cs - 1);
                while c < start + len {
                    match self.refcount(c)? {
                        0 => tracing::warn!("qcow2: freeing cluster 0x{c:x} with refcount 0"),
                        n => self.set_refcount(c, n - 1, 0)?,
                    }
                    c += cs;
                }
            }
            self.write_refcounts()?;
            self.file.sync_data()?;
            self.mark_refcounts_clean();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths_roundtrip() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 64];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            set_refcount_in(&mut block, 3, order, max);
            set_refcount_in(&mut block, 4, order, 1);
            assert_eq!(get_refcount(&block, 3, order), max, "order {order}");
            assert_eq!(get_refcount(&block, 4, order), 1, "order {order}");
            assert_eq!(get_refcount(&block, 2, order), 0, "order {order}");
            assert_eq!(get_refcount(&block, 5, order), 0, "order {order}");
        }
    }
}

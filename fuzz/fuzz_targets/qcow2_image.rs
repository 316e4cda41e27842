//! Opening, reading and writing hostile qcow2 images.
//!
//! Input: either a whole image (when it starts with the qcow2 magic), or patches applied to
//! a small valid image with data in it (3 bytes each: offset u16 little-endian, new byte), so
//! the fuzzer reaches the tables, refcounts and compressed-cluster paths, not only the
//! header checks. Every operation may fail; none may panic, hang or allocate without bound.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use disk::{DiskImage, Format};
use libfuzzer_sys::fuzz_target;

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kapsel-fuzz-qcow2-{}-{name}", std::process::id()))
}

/// A 1 MiB image with 512-byte clusters, some data, a zero cluster and a backing file.
fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let backing = scratch("backing.raw");
        std::fs::write(&backing, vec![0x42u8; 1 << 20]).expect("backing");
        let path = scratch("base.qcow2");
        let _ = std::fs::remove_file(&path);
        let opts = disk::CreateOptions {
            size: Some(1 << 20),
            backing: Some((backing.to_string_lossy().into_owned(), Format::Raw)),
            cluster_bits: 9,
            ..Default::default()
        };
        disk::create(&path, &opts).expect("create");
        {
            let img = disk::open(&path, Format::Qcow2, false).expect("open");
            for i in 0..8u64 {
                img.write_at(&[i as u8; 700], i * 70_000).expect("write");
            }
            img.write_zeroes(4096, 1024, false).expect("zeroes");
        }
        let bytes = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

fuzz_target!(|data: &[u8]| {
    let image = if data.starts_with(&disk::QCOW2_MAGIC) {
        data.to_vec()
    } else {
        let mut b = base().to_vec();
        for p in data.chunks_exact(3) {
            let off = usize::from(u16::from_le_bytes([p[0], p[1]])) % b.len();
            b[off] = p[2];
        }
        b
    };
    let path = scratch("input.qcow2");
    if std::fs::write(&path, &image).is_err() {
        return;
    }
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let Ok(img) = disk::qcow2::Qcow2Image::open(&path, read_only) else {
        return;
    };
    let size = img.size();
    let mut buf = vec![0u8; 4096];
    for off in [0, 4096, 70_000, size / 2, size.saturating_sub(4096)] {
        let n = (size.saturating_sub(off)).min(4096) as usize;
        let _ = img.read_at(&mut buf[..n], off);
        if !read_only {
            let _ = img.write_at(&buf[..n.min(1000)], off);
            let _ = img.write_zeroes(off, n as u64, off % 2 == 0);
        }
    }
    let _ = img.flush();
});

//! Unit tests: kapsel against its own images (qemu-img interop is in tests/qemu_img.rs).

use super::*;
use crate::{create, CreateOptions};

pub(crate) fn tmpdir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("kapsel-disk-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 512) as u8 ^ seed).collect()
}

fn qcow2(path: &Path, size: u64, cluster_bits: u32, backing: Option<(&str, Format)>) {
    create(
        path,
        &CreateOptions {
            format: Format::Qcow2,
            size: Some(size),
            backing: backing.map(|(n, f)| (n.to_string(), f)),
            cluster_bits,
        },
    )
    .unwrap();
}

#[test]
fn new_image_reads_zeros_and_keeps_writes_across_reopen() {
    let d = tmpdir("rw");
    let p = d.join("a.qcow2");
    qcow2(&p, 16 << 20, 16, None);
    {
        let img = Qcow2Image::open(&p, false).unwrap();
        assert_eq!(img.size(), 16 << 20);
        let mut b = vec![1u8; 4096];
        img.read_at(&mut b, 8 << 20).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        // Straddles a cluster boundary.
        let data = pattern(100_000, 3);
        img.write_at(&data, 65536 - 5000).unwrap();
        img.write_at(&[9; 512], (16 << 20) - 512).unwrap();
        img.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        img.read_at(&mut back, 65536 - 5000).unwrap();
        assert_eq!(back, data);
        assert!(img.read_at(&mut [0u8; 2], (16 << 20) - 1).is_err());
        assert!(img.write_at(&[0u8; 2], u64::MAX).is_err());
    }
    let img = Qcow2Image::open(&p, true).unwrap();
    let mut back = vec![0u8; 100_000];
    img.read_at(&mut back, 65536 - 5000).unwrap();
    assert_eq!(back, pattern(100_000, 3));
    let mut last = [0u8; 512];
    img.read_at(&mut last, (16 << 20) - 512).unwrap();
    assert_eq!(last, [9; 512]);
    assert!(img.write_at(&[1], 0).is_err());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn small_clusters_grow_the_refcount_table() {
    let d = tmpdir("grow");
    let p = d.join("small.qcow2");
    // 512-byte clusters: one refcount block covers 128 KiB, the initial table 8 MiB.
    qcow2(&p, 32 << 20, 9, None);
    let before = std::fs::metadata(&p).unwrap().len();
    {
        let img = Qcow2Image::open(&p, false).unwrap();
        for i in 0..(24u64 << 20) / 4096 {
            img.write_at(&pattern(4096, i as u8), i * 4096).unwrap();
        }
        img.flush().unwrap();
    }
    assert!(std::fs::metadata(&p).unwrap().len() > before + (24 << 20));
    let h = read_header(&p).unwrap();
    assert!(h.refcount_table_clusters > 1, "the refcount table grew");
    let img = Qcow2Image::open(&p, false).unwrap();
    for i in [0u64, 1, 2047, 4000, 6143] {
        let mut b = vec![0u8; 4096];
        img.read_at(&mut b, i * 4096).unwrap();
        assert_eq!(b, pattern(4096, i as u8), "block {i}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn overlay_reads_through_to_a_raw_backing_and_leaves_it_alone() {
    let d = tmpdir("backing");
    let base = d.join("base.raw");
    let base_data = pattern(1 << 20, 0x55);
    std::fs::write(&base, &base_data).unwrap();
    let top = d.join("top.qcow2");
    // Larger than its backing: the rest reads as zeros.
    qcow2(&top, 2 << 20, 16, Some(("base.raw", Format::Raw)));
    let img = crate::open(&top, Format::Qcow2, false).unwrap();
    let mut b = vec![0u8; 1 << 20];
    img.read_at(&mut b, 0).unwrap();
    assert_eq!(b, base_data);
    img.write_at(&[0xee; 100], 70_000).unwrap();
    img.read_at(&mut b, 0).unwrap();
    let mut want = base_data.clone();
    want[70_000..70_100].fill(0xee);
    assert_eq!(b, want);
    let mut tail = vec![1u8; 4096];
    img.read_at(&mut tail, (1 << 20) - 2048).unwrap();
    assert_eq!(&tail[..2048], &base_data[(1 << 20) - 2048..]);
    assert!(tail[2048..].iter().all(|&x| x == 0));
    // Zeroing a whole cluster hides the backing data.
    img.write_zeroes(3 << 16, 1 << 16, false).unwrap();
    img.discard(5 << 16, 1 << 16).unwrap();
    let mut z = vec![1u8; 1 << 16];
    img.read_at(&mut z, 3 << 16).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    img.read_at(&mut z, 5 << 16).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    // A partial zero range keeps the rest of the cluster.
    img.write_zeroes((7 << 16) + 512, 512, true).unwrap();
    let mut c = vec![0u8; 1536];
    img.read_at(&mut c, 7 << 16).unwrap();
    assert_eq!(&c[..512], &base_data[7 << 16..(7 << 16) + 512]);
    assert!(c[512..1024].iter().all(|&x| x == 0));
    assert_eq!(&c[1024..], &base_data[(7 << 16) + 1024..(7 << 16) + 1536]);
    img.flush().unwrap();
    drop(img);
    assert_eq!(std::fs::read(&base).unwrap(), base_data);
    let chain = crate::info_chain(&top, None).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].backing_path.as_deref(), Some(base.as_path()));
    assert_eq!(chain[1].format, Format::Raw);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn qcow2_backing_chains_resolve_and_are_bounded() {
    let d = tmpdir("chain");
    let base = d.join("base.qcow2");
    qcow2(&base, 1 << 20, 16, None);
    {
        let img = Qcow2Image::open(&base, false).unwrap();
        img.write_at(&[7; 4096], 0).unwrap();
    }
    let mid = d.join("mid.qcow2");
    qcow2(&mid, 1 << 20, 12, Some(("base.qcow2", Format::Qcow2)));
    let top = d.join("top.qcow2");
    qcow2(
        &top,
        1 << 20,
        16,
        Some((mid.to_str().unwrap(), Format::Qcow2)),
    );
    let img = crate::open(&top, Format::Qcow2, false).unwrap();
    let mut b = [0u8; 8];
    img.read_at(&mut b, 4000).unwrap();
    assert_eq!(b, [7, 7, 7, 7, 7, 7, 7, 7]);
    drop(img);
    assert_eq!(
        crate::info_chain(&top, Some(Format::Qcow2)).unwrap().len(),
        3
    );

    // An image that is its own backing file.
    let looped = d.join("loop.qcow2");
    qcow2(&looped, 1 << 20, 16, Some(("base.qcow2", Format::Qcow2)));
    let mut bytes = std::fs::read(&looped).unwrap();
    let at = bytes.windows(10).position(|w| w == b"base.qcow2").unwrap();
    bytes[at..at + 10].copy_from_slice(b"loop.qcow2");
    std::fs::write(&looped, &bytes).unwrap();
    assert!(matches!(
        crate::open(&looped, Format::Qcow2, false),
        Err(DiskError::ChainTooDeep { .. })
    ));
    assert!(crate::info_chain(&looped, None).is_err());
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn unsupported_images_are_clear_errors() {
    let d = tmpdir("unsup");
    let p = d.join("x.qcow2");
    qcow2(&p, 1 << 20, 16, None);
    let good = std::fs::read(&p).unwrap();
    let with = |patch: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        patch(&mut b);
        std::fs::write(&p, &b).unwrap();
        Qcow2Image::open(&p, false)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(with(&|b| b[35] = 2).contains("encrypted"));
    assert!(with(&|b| b[72] = 0x80).contains("unknown incompatible feature"));
    assert!(with(&|b| b[79] = 1).contains("dirty"));
    assert!(with(&|b| b[63] = 1).contains("internal snapshots"));
    assert!(with(&|b| b[0] = 0).contains("not a qcow2"));
    // No recorded backing format.
    let top = d.join("top.qcow2");
    std::fs::write(d.join("b.raw"), [0u8; 4096]).unwrap();
    qcow2(&top, 4096, 16, Some(("b.raw", Format::Raw)));
    let mut b = std::fs::read(&top).unwrap();
    b[104..108].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // unknown extension type
    std::fs::write(&top, &b).unwrap();
    let e = Qcow2Image::open(&top, false).unwrap_err().to_string();
    assert!(e.contains("no recorded format"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn unstated_format_refuses_what_looks_like_qcow2() {
    let d = tmpdir("probe");
    let q = d.join("q.img");
    qcow2(&q, 1 << 20, 16, None);
    let r = d.join("r.img");
    std::fs::write(&r, [0u8; 4096]).unwrap();
    assert_eq!(crate::check_unstated_format(&r).unwrap(), Format::Raw);
    let e = crate::check_unstated_format(&q).unwrap_err().to_string();
    assert!(e.contains("format=qcow2"), "{e}");
    std::fs::remove_dir_all(d).unwrap();
}

/// Small deterministic generator for the corruption test.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn corrupted_images_fail_cleanly() {
    let d = tmpdir("corrupt");
    let p = d.join("c.qcow2");
    qcow2(&p, 4 << 20, 12, None);
    {
        let img = Qcow2Image::open(&p, false).unwrap();
        for i in 0..64u64 {
            img.write_at(&pattern(4096, i as u8), i * 65536).unwrap();
        }
    }
    let good = std::fs::read(&p).unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut b = good.clone();
        for _ in 0..1 + round % 8 {
            let i = (rng.next() % b.len() as u64) as usize;
            b[i] = rng.next() as u8;
        }
        std::fs::write(&p, &b).unwrap();
        let Ok(img) = Qcow2Image::open(&p, round % 2 == 0) else {
            continue;
        };
        let mut buf = vec![0u8; 65536];
        for i in 0..64u64 {
            let _ = img.read_at(&mut buf, i * 65536);
            if round % 2 == 0 {
                continue;
            }
            let _ = img.write_at(&buf[..1000], i * 65536 + 100);
            let _ = img.write_zeroes(i * 65536, 4096, true);
        }
        let _ = img.flush();
    }
    std::fs::remove_dir_all(d).unwrap();
}

fn whole(img: &dyn DiskImage) -> Vec<u8> {
    let mut b = vec![0u8; img.size() as usize];
    img.read_at(&mut b, 0).unwrap();
    b
}

/// raw A (4 MiB) ← B (qcow2, 2 MiB, 64 KiB clusters) ← C (qcow2, 3 MiB, 4 KiB clusters):
/// B shorter than A (past B's end C reads zeros, not A) and cluster sizes that differ.
fn three_layers(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let a = d.join("a.raw");
    std::fs::write(&a, pattern(4 << 20, 0x11)).unwrap();
    let b = d.join("b.qcow2");
    qcow2(&b, 2 << 20, 16, Some(("a.raw", Format::Raw)));
    {
        let img = Qcow2Image::open(&b, false).unwrap();
        img.write_at(&pattern(100_000, 0x22), 30_000).unwrap();
        img.write_zeroes(512 << 10, 128 << 10, false).unwrap(); // zero clusters
        img.write_at(&[7u8; 512], (2 << 20) - 512).unwrap();
    }
    let c = d.join("c.qcow2");
    qcow2(&c, 3 << 20, 12, Some(("b.qcow2", Format::Qcow2)));
    {
        let img = Qcow2Image::open(&c, false).unwrap();
        img.write_at(&pattern(5000, 0x33), 40_000).unwrap(); // over B's data
        img.write_at(&pattern(4096, 0x44), 1 << 20).unwrap(); // over A only
        img.write_at(&[9u8; 4096], (3 << 20) - 4096).unwrap(); // past B's end
    }
    (a, b, c)
}

#[test]
fn folding_a_layer_keeps_the_view_and_shortens_the_chain() {
    let d = tmpdir("fold");
    let (a, b, c) = three_layers(&d);
    let before = whole(&Qcow2Image::open(&c, true).unwrap());
    let b_bytes = std::fs::read(&b).unwrap();
    // A reader of C (as a VMM whose chain runs through C) open across the fold.
    let reader = Qcow2Image::open(&c, true).unwrap();
    assert_eq!(whole(&reader), before);

    let out = fold_backing(&c).unwrap();
    assert_eq!(out.folded, b);
    assert_eq!(out.backing, Some(("a.raw".to_string(), Format::Raw)));
    assert!(out.copied > 0 && out.zeroed > 0, "{out:?}");
    assert_eq!(std::fs::read(&b).unwrap(), b_bytes, "B is only read");
    let chain = crate::info_chain(&c, Some(Format::Qcow2)).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].path, a);
    std::fs::remove_file(&b).unwrap();
    assert_eq!(whole(&Qcow2Image::open(&c, true).unwrap()), before);
    assert_eq!(whole(&reader), before, "the old reader's view is unchanged");

    // Nothing left to fold into a raw backing, and an image without backing refuses.
    assert!(matches!(fold_backing(&c), Err(DiskError::BadRequest(_))));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_fold_cut_short_before_the_header_switch_reads_the_same_and_finishes() {
    let d = tmpdir("fold-crash");
    let (_, b, c) = three_layers(&d);
    let before = whole(&Qcow2Image::open(&c, true).unwrap());
    {
        // The crash: clusters copied and durable, the header still names B.
        let top = Qcow2Image::open(&c, false).unwrap();
        let base = Qcow2Image::open(&b, true).unwrap();
        fold::copy_decided_clusters(&top, &base).unwrap();
        top.flush().unwrap();
    }
    let chain = crate::info_chain(&c, Some(Format::Qcow2)).unwrap();
    assert_eq!(chain[1].path, b);
    assert_eq!(whole(&Qcow2Image::open(&c, true).unwrap()), before);
    // Folding again finishes with nothing more to copy.
    let out = fold_backing(&c).unwrap();
    assert_eq!((out.copied, out.zeroed), (0, 0), "{out:?}");
    assert_eq!(whole(&Qcow2Image::open(&c, true).unwrap()), before);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn folding_the_last_layer_leaves_no_backing() {
    let d = tmpdir("fold-last");
    let b = d.join("b.qcow2");
    qcow2(&b, 1 << 20, 16, None);
    {
        let img = Qcow2Image::open(&b, false).unwrap();
        img.write_at(&pattern(70_000, 5), 1000).unwrap();
    }
    let sub = d.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let c = sub.join("c.qcow2");
    qcow2(&c, 1 << 20, 16, Some(("../b.qcow2", Format::Qcow2)));
    let before = whole(&Qcow2Image::open(&c, true).unwrap());
    let out = fold_backing(&c).unwrap();
    assert_eq!(out.backing, None);
    std::fs::remove_file(&b).unwrap();
    let h = read_header(&c).unwrap();
    assert_eq!((h.backing_file, h.backing_format), (None, None));
    assert_eq!(whole(&Qcow2Image::open(&c, true).unwrap()), before);
    std::fs::remove_dir_all(d).unwrap();
}

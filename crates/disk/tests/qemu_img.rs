//! Interop with QEMU's own tools (Debian package qemu-utils, installed by
//! scripts/setup-host.sh): kapsel reads and writes what `qemu-img` makes, and `qemu-img
//! check` / `compare` / `info` agree with what kapsel leaves behind.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use disk::{create, CreateOptions, DiskImage, Format};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kapsel-qemu-img-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a QEMU tool; a missing tool fails the test (never a silent skip).
fn run(tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (scripts/setup-host.sh installs qemu-utils)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(tool: &str, args: &[&str]) -> String {
    let (good, text) = run(tool, args);
    assert!(good, "{tool} {args:?} failed:\n{text}");
    text
}

/// `qemu-img create` of a qcow2 overlay at `path` over `backing` (`fmt`), with `-o opts`
/// unless empty.
fn qemu_overlay(opts: &str, backing: &str, fmt: &str, path: &Path) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend(["-b", backing, "-F", fmt, p(path)]);
    ok("qemu-img", &args);
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img check` finds no errors and no leaks.
fn assert_clean(img: &Path) {
    let text = ok("qemu-img", &["check", p(img)]);
    assert!(text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
}

/// `qemu-img compare` says the image reads exactly as the raw file `want`.
fn assert_same(img: &Path, want: &[u8], dir: &Path) {
    let raw = dir.join("expected.raw");
    std::fs::write(&raw, want).unwrap();
    let text = ok(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", p(img), p(&raw)],
    );
    assert!(text.contains("Images are identical"), "{text}");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(7) ^ seed)
        .collect()
}

/// Writes the same changes to the image and to `model`.
fn scribble(img: &dyn DiskImage, model: &mut [u8]) {
    let len = model.len();
    let mut put = |off: usize, data: &[u8]| {
        img.write_at(data, off as u64).unwrap();
        model[off..off + data.len()].copy_from_slice(data);
    };
    put(0, &[0xaa; 512]);
    put(65536 - 1000, &pattern(3000, 1));
    put(3 << 20, &pattern(1 << 20, 2));
    put(len - 4096, &[0x5a; 4096]);
    img.write_zeroes(1 << 20, 1 << 16, false).unwrap();
    model[1 << 20..(1 << 20) + (1 << 16)].fill(0);
    img.discard(2 << 20, 3 << 16).unwrap();
    model[2 << 20..(2 << 20) + (3 << 16)].fill(0);
    img.write_zeroes((3 << 20) + 100, 700, true).unwrap();
    model[(3 << 20) + 100..(3 << 20) + 800].fill(0);
    img.flush().unwrap();
}

#[test]
fn kapsel_writes_into_a_qemu_img_overlay_over_raw() {
    let d = tmpdir("overlay");
    let base = d.join("base.raw");
    let base_data = pattern(8 << 20, 0x33);
    std::fs::write(&base, &base_data).unwrap();
    let top = d.join("top.qcow2");
    qemu_overlay("", "base.raw", "raw", &top);
    let mut model = base_data.clone();
    {
        let img = disk::open(&top, Format::Qcow2, false).unwrap();
        let mut all = vec![0u8; 8 << 20];
        img.read_at(&mut all, 0).unwrap();
        assert_eq!(all, base_data);
        scribble(img.as_ref(), &mut model);
    }
    assert_clean(&top);
    assert_same(&top, &model, &d);
    assert_eq!(std::fs::read(&base).unwrap(), base_data, "base unchanged");
    let info = ok(
        "qemu-img",
        &["info", "--backing-chain", "--output=json", p(&top)],
    );
    assert!(
        info.contains("\"backing-filename\": \"base.raw\""),
        "{info}"
    );
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    assert_eq!(info.matches("\"filename\"").count(), 2, "{info}");
    // What QEMU writes afterwards, kapsel reads.
    ok("qemu-io", &["-c", "write -P 0xc7 131072 65536", p(&top)]);
    let img = disk::open(&top, Format::Qcow2, true).unwrap();
    let mut b = vec![0u8; 65536];
    img.read_at(&mut b, 131072).unwrap();
    assert!(b.iter().all(|&x| x == 0xc7));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn images_kapsel_creates_pass_qemu_img_check() {
    let d = tmpdir("create");
    let base = d.join("base.qcow2");
    create(
        &base,
        &CreateOptions {
            size: Some(8 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    assert_clean(&base);
    let mut model = vec![0u8; 8 << 20];
    scribble(
        disk::open(&base, Format::Qcow2, false).unwrap().as_ref(),
        &mut model,
    );
    assert_clean(&base);
    assert_same(&base, &model, &d);

    // An overlay of the qcow2 base, size taken from it; 512-byte clusters make the
    // refcount table grow.
    let top = d.join("top.qcow2");
    create(
        &top,
        &CreateOptions {
            backing: Some(("base.qcow2".into(), Format::Qcow2)),
            cluster_bits: 9,
            ..Default::default()
        },
    )
    .unwrap();
    assert_clean(&top);
    {
        let img = disk::open(&top, Format::Qcow2, false).unwrap();
        assert_eq!(img.size(), 8 << 20);
        for i in 0..(8 << 20) / 8192 {
            let off = i * 8192;
            img.write_at(&[i as u8; 8192], off as u64).unwrap();
            model[off..off + 8192].fill(i as u8);
        }
        img.flush().unwrap();
    }
    assert_clean(&top);
    assert_same(&top, &model, &d);
    let info_json = ok("qemu-img", &["info", "--output=json", p(&top)]);
    let h = std::fs::read(&top).unwrap();
    assert!(
        u32::from_be_bytes([h[56], h[57], h[58], h[59]]) > 1,
        "the refcount table grew: {info_json}"
    );
    let info = ok("qemu-img", &["info", "--backing-chain", p(&top)]);
    assert!(info.contains("backing file format: qcow2"), "{info}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn kapsel_reads_and_rewrites_compressed_and_version_2_images() {
    let d = tmpdir("compressed");
    let src = d.join("src.raw");
    let data = pattern(4 << 20, 0x11);
    std::fs::write(&src, &data).unwrap();
    for (name, extra) in [
        ("c.qcow2", vec!["-c"]),
        ("v2.qcow2", vec!["-o", "compat=0.10"]),
        (
            "v2c.qcow2",
            vec!["-c", "-o", "compat=0.10,cluster_size=4096"],
        ),
    ] {
        let img_path = d.join(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend(extra.iter().copied());
        args.extend([p(&src), p(&img_path)]);
        ok("qemu-img", &args);
        let mut model = data.clone();
        {
            let img = disk::open(&img_path, Format::Qcow2, false).unwrap();
            let mut all = vec![0u8; 4 << 20];
            img.read_at(&mut all, 0).unwrap();
            assert_eq!(all, data, "{name}");
            scribble(img.as_ref(), &mut model);
        }
        assert_clean(&img_path);
        assert_same(&img_path, &model, &d);
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// A layer folded into its overlay: qemu-img made both (v3 with QEMU's extensions, and v2),
/// QEMU and kapsel wrote into them; afterwards `qemu-img check` is clean, the overlay backs
/// onto the layer's own backing file, and it reads exactly as it did before.
#[test]
fn a_folded_layer_leaves_an_identical_clean_image() {
    for compat in ["1.1", "0.10"] {
        let d = tmpdir(&format!("fold-{compat}"));
        let a = d.join("a.raw");
        std::fs::write(&a, pattern(8 << 20, 0x3c)).unwrap();
        let b = d.join("b.qcow2");
        let c = d.join("c.qcow2");
        let opts = format!("compat={compat}");
        qemu_overlay(&opts, "a.raw", "raw", &b);
        ok("qemu-io", &["-c", "write -P 0x61 0 200k", p(&b)]);
        ok("qemu-io", &["-c", "write -z 1M 256k", p(&b)]);
        {
            let img = disk::open(&b, Format::Qcow2, false).unwrap();
            img.write_at(&pattern(300_000, 9), 3 << 20).unwrap();
        }
        qemu_overlay(&opts, "b.qcow2", "qcow2", &c);
        ok("qemu-io", &["-c", "write -P 0x62 64k 64k", p(&c)]);
        {
            let img = disk::open(&c, Format::Qcow2, false).unwrap();
            img.write_at(&[0xee; 4096], 5 << 20).unwrap();
        }
        let flat = d.join("flat.raw");
        ok("qemu-img", &["convert", "-O", "raw", p(&c), p(&flat)]);
        let want = std::fs::read(&flat).unwrap();

        let out = disk::fold_backing(&c).unwrap();
        assert_eq!(out.backing, Some(("a.raw".to_string(), Format::Raw)));
        std::fs::remove_file(&b).unwrap();
        assert_clean(&c);
        let info = ok("qemu-img", &["info", p(&c)]);
        assert!(info.contains("backing file: a.raw"), "{info}");
        assert!(info.contains(&format!("compat: {compat}")), "{info}");
        let text = ok(
            "qemu-img",
            &["compare", "-f", "qcow2", "-F", "raw", p(&c), p(&flat)],
        );
        assert!(text.contains("Images are identical"), "{text}");
        let img = disk::open(&c, Format::Qcow2, true).unwrap();
        let mut got = vec![0u8; want.len()];
        img.read_at(&mut got, 0).unwrap();
        assert!(
            got == want,
            "kapsel reads the folded image as before ({compat})"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}

//! Parser for the report the test guests print on their console:
//!
//! ```text
//! GUEST-READY
//! guest: uptime=0.52s kernel=6.1.192-vmmguest cpus=2 memtotal=1004784 kB
//! guest: root=rootfs rootfs
//! guest: virtio virtio0 device-id=0x0002 driver=virtio_blk
//! guest: msi-irqs=3
//! guest: exit=reboot
//! ```
//!
//! The text may carry anything else around it (kernel log, VMM messages, `\r`).

use std::collections::BTreeMap;

/// One virtio device as the guest saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioDevice {
    pub name: String,
    pub device_id: String,
    pub driver: String,
}

/// Everything the guest reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// `GUEST-READY` appeared.
    pub ready: bool,
    /// `key=value` fields of all `guest:` lines; a value runs to the next `key=` word
    /// (so `memtotal` is `"1004784 kB"`). Later lines win on repeated keys.
    pub fields: BTreeMap<String, String>,
    pub virtio: Vec<VirtioDevice>,
}

impl GuestReport {
    /// Parses every `guest:` line in `text`.
    pub fn parse(text: &str) -> Self {
        let mut report = GuestReport::default();
        for raw in text.lines() {
            let line = raw.trim_end_matches('\r');
            if line.trim() == "GUEST-READY" || line.ends_with("GUEST-READY") {
                report.ready = true;
            }
            let Some(pos) = line.find("guest: ") else {
                continue;
            };
            let rest = &line[pos + "guest: ".len()..];
            let fields = parse_fields(rest);
            if let Some(name) = rest.strip_prefix("virtio ") {
                let name = name.split_whitespace().next().unwrap_or("").to_string();
                let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
                report.virtio.push(VirtioDevice {
                    name,
                    device_id: get("device-id"),
                    driver: get("driver"),
                });
            } else {
                report.fields.extend(fields);
            }
        }
        report
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// `cpus=N`: the processors the guest brought up.
    pub fn cpus(&self) -> Option<u32> {
        self.get("cpus")?.parse().ok()
    }

    /// `memtotal=N kB`: MemTotal from /proc/meminfo, in KiB.
    pub fn memtotal_kib(&self) -> Option<u64> {
        self.get("memtotal")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// `uptime=N.NNs`: the guest's own uptime when it reported (guest clock: not a benchmark).
    pub fn uptime_secs(&self) -> Option<f64> {
        self.get("uptime")?.trim_end_matches('s').parse().ok()
    }

    /// `kernel=…`: the guest's `uname -r`.
    pub fn kernel(&self) -> Option<&str> {
        self.get("kernel")
    }
}

/// `a=1 b=2 3 c=x` → {a: "1", b: "2 3", c: "x"}; words before the first `key=` are dropped.
fn parse_fields(s: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for word in s.split_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
                current = Some(k.to_string());
            }
            _ => {
                if let Some(value) = current.as_ref().and_then(|k| out.get_mut(k)) {
                    value.push(' ');
                    value.push_str(word);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "[    0.9] Run /init as init process\r\n\
        GUEST-READY\r\n\
        guest: uptime=0.52s kernel=6.1.192-vmmguest cpus=2 memtotal=1004784 kB\r\n\
        guest: root=rootfs rootfs\n\
        guest: virtio virtio0 device-id=0x0002 driver=virtio_blk\n\
        guest: msi-irqs=3\n\
        guest: exit=reboot\n";

    #[test]
    fn parses_the_standard_report() {
        let r = GuestReport::parse(SAMPLE);
        assert!(r.ready);
        assert_eq!(r.cpus(), Some(2));
        assert_eq!(r.memtotal_kib(), Some(1_004_784));
        assert_eq!(r.kernel(), Some("6.1.192-vmmguest"));
        assert_eq!(r.uptime_secs(), Some(0.52));
        assert_eq!(r.get("root"), Some("rootfs rootfs"));
        assert_eq!(r.get("msi-irqs"), Some("3"));
        assert_eq!(r.get("exit"), Some("reboot"));
        assert_eq!(
            r.virtio,
            vec![VirtioDevice {
                name: "virtio0".into(),
                device_id: "0x0002".into(),
                driver: "virtio_blk".into()
            }]
        );
    }

    #[test]
    fn finds_lines_behind_other_output() {
        let r = GuestReport::parse("xx\x1b[0mguest: cpus=4 memtotal=12 kB\n");
        assert_eq!(r.cpus(), Some(4));
        assert!(!r.ready);
    }

    #[test]
    fn garbage_gives_an_empty_report() {
        let r = GuestReport::parse("guest: =x cpus=many\nguest:\n\u{0}\u{ff}");
        assert_eq!(r.cpus(), None);
        assert_eq!(r.memtotal_kib(), None);
        assert!(r.virtio.is_empty());
    }

    #[test]
    fn words_before_the_first_key_are_dropped() {
        let f = parse_fields("lead a=1 2 b=3");
        assert_eq!(f.get("a").map(String::as_str), Some("1 2"));
        assert_eq!(f.get("b").map(String::as_str), Some("3"));
        assert_eq!(f.len(), 2);
    }
}

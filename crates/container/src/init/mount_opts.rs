//! OCI mount options (`ro`, `nosuid`, `rbind`, `mode=755`, ...) → `mount(2)` arguments.

/// The parsed options of one mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOpts {
    /// `MS_*` flags for the mount itself.
    pub flags: u64,
    /// Propagation flags applied by a second call (`MS_PRIVATE`, `MS_SLAVE`, ...).
    pub propagation: u64,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
    pub bind: bool,
    pub recursive: bool,
}

/// Parses OCI mount options.
pub fn parse(options: &[String]) -> MountOpts {
    let mut o = MountOpts::default();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear): (u64, u64) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
            | "runbindable" => {
                let rec = opt.starts_with('r');
                let base = match opt.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "slave" => libc::MS_SLAVE,
                    "shared" => libc::MS_SHARED,
                    _ => libc::MS_UNBINDABLE,
                };
                o.propagation = base | if rec { libc::MS_REC } else { 0 };
                (0, 0)
            }
            other => {
                data.push(other.to_string());
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o.data = data.join(",");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_data_are_split() {
        let o = parse(&opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]));
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
    }

    #[test]
    fn later_options_override_earlier() {
        let o = parse(&opts(&["ro", "rw"]));
        assert_eq!(o.flags & libc::MS_RDONLY, 0);
    }

    #[test]
    fn rbind_and_propagation() {
        let o = parse(&opts(&["rbind", "rslave"]));
        assert!(o.bind && o.recursive);
        assert_eq!(o.propagation, libc::MS_SLAVE | libc::MS_REC);
        let o = parse(&opts(&["rshared"]));
        assert_eq!(o.propagation, libc::MS_SHARED | libc::MS_REC);
        let o = parse(&opts(&["private"]));
        assert_eq!(o.propagation, libc::MS_PRIVATE);
    }
}

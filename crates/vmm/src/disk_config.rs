//! The `--disk` option: `path=FILE[,format=raw|qcow2][,readonly=on|off][,id=NAME]`,
//! repeatable.
//!
//! Without `format=` a disk is raw, and a file that starts with a qcow2 header is refused
//! rather than guessed at: a guest can write such a header into its raw disk, and a host
//! that then read it as qcow2 would follow its backing-file name to any host file.
//!
//! The id names the disk (and is its GET_ID serial); it defaults to `disk0`, `disk1`, … in
//! command-line order. The rate-limit keys of `--net` (`bw=`, `iops=`, …) are added here when
//! the disk gets its limiter.

use std::path::PathBuf;

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Image format as the user said it; `None`: raw, refusing qcow2-looking files.
    #[serde(default)]
    pub format: Option<disk::Format>,
    /// Name and serial; `None` gets `diskN`.
    pub id: Option<String>,
    /// I/O limits (`bw=`, `iops=`, `bw_burst=`, `iops_burst=`).
    #[serde(default)]
    pub limit: crate::net_config::LimitSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskOptionError {
    #[error("--disk: expected KEY=VALUE, got '{0}'")]
    NotKeyValue(String),
    #[error(
        "--disk: unknown key '{0}' (known: path, format, readonly, id, bw, iops, bw_burst, \
         iops_burst)"
    )]
    UnknownKey(String),
    #[error("--disk: '{0}' given twice")]
    Duplicate(String),
    #[error("--disk: missing 'path='")]
    MissingPath,
    #[error("--disk: format must be raw or qcow2, got '{0}'")]
    BadFormat(String),
    #[error("--disk: readonly must be on or off, got '{0}'")]
    BadReadOnly(String),
    #[error("--disk: id '{0}' must be 1 to 20 characters of A-Z, a-z, 0-9, '-', '_' or '.'")]
    BadId(String),
    #[error("--disk: id '{0}' is used by two disks")]
    DuplicateId(String),
    #[error(transparent)]
    Limit(crate::net_config::OptionError),
}

fn valid_id(id: &str) -> bool {
    (1..=20).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses one `--disk` value.
pub fn parse_disk(s: &str) -> Result<DiskConfig, DiskOptionError> {
    let mut path = None;
    let mut read_only = None;
    let mut format = None;
    let mut id = None;
    let mut limit = crate::net_config::LimitSpec::default();
    for item in s.split(',') {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| DiskOptionError::NotKeyValue(item.to_string()))?;
        let slot_taken = match k {
            "path" => path.replace(PathBuf::from(v)).is_some(),
            "format" => {
                let f = v
                    .parse::<disk::Format>()
                    .map_err(|_| DiskOptionError::BadFormat(v.to_string()))?;
                format.replace(f).is_some()
            }
            "readonly" | "ro" => {
                let ro = match v {
                    "on" | "true" | "yes" | "1" => true,
                    "off" | "false" | "no" | "0" => false,
                    _ => return Err(DiskOptionError::BadReadOnly(v.to_string())),
                };
                read_only.replace(ro).is_some()
            }
            "id" => {
                if !valid_id(v) {
                    return Err(DiskOptionError::BadId(v.to_string()));
                }
                id.replace(v.to_string()).is_some()
            }
            _ => {
                if !crate::net_config::apply_limit_key("disk", &mut limit, k, v)
                    .map_err(DiskOptionError::Limit)?
                {
                    return Err(DiskOptionError::UnknownKey(k.to_string()));
                }
                false
            }
        };
        if slot_taken {
            return Err(DiskOptionError::Duplicate(k.to_string()));
        }
    }
    let path = path
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or(DiskOptionError::MissingPath)?;
    Ok(DiskConfig {
        path,
        read_only: read_only.unwrap_or(false),
        format,
        id,
        limit,
    })
}

/// The ids of `disks` (explicit or `diskN`), rejecting duplicates.
pub fn disk_ids(disks: &[DiskConfig]) -> Result<Vec<String>, DiskOptionError> {
    let mut ids: Vec<String> = Vec::with_capacity(disks.len());
    for (i, d) in disks.iter().enumerate() {
        let id = d.id.clone().unwrap_or_else(|| format!("disk{i}"));
        if ids.contains(&id) {
            return Err(DiskOptionError::DuplicateId(id));
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options_parse() {
        assert_eq!(
            parse_disk("path=/a/b.img"),
            Ok(DiskConfig {
                path: "/a/b.img".into(),
                read_only: false,
                format: None,
                id: None,
                limit: Default::default(),
            })
        );
        assert_eq!(
            parse_disk("path=x,readonly=on,id=root-1,format=qcow2"),
            Ok(DiskConfig {
                path: "x".into(),
                read_only: true,
                format: Some(disk::Format::Qcow2),
                id: Some("root-1".into()),
                limit: Default::default(),
            })
        );
    }

    #[test]
    fn malformed_disk_options_are_one_clear_error() {
        use DiskOptionError::*;
        assert_eq!(parse_disk(""), Err(NotKeyValue("".into())));
        assert_eq!(parse_disk("/a.img"), Err(NotKeyValue("/a.img".into())));
        assert_eq!(parse_disk("readonly=on"), Err(MissingPath));
        assert_eq!(parse_disk("path="), Err(MissingPath));
        assert_eq!(parse_disk("path=a,path=b"), Err(Duplicate("path".into())));
        assert_eq!(
            parse_disk("path=a,readonly=maybe"),
            Err(BadReadOnly("maybe".into()))
        );
        assert_eq!(parse_disk("path=a,size=1G"), Err(UnknownKey("size".into())));
        assert_eq!(
            parse_disk("path=a,format=vmdk"),
            Err(BadFormat("vmdk".into()))
        );
        assert_eq!(
            parse_disk("path=a,format=raw,format=raw"),
            Err(Duplicate("format".into()))
        );
        assert_eq!(
            parse_disk("path=a,id=has space"),
            Err(BadId("has space".into()))
        );
        assert_eq!(
            parse_disk(&format!("path=a,id={}", "x".repeat(21))),
            Err(BadId("x".repeat(21)))
        );
    }

    #[test]
    fn ids_default_and_must_be_unique() {
        let a = parse_disk("path=a").unwrap();
        let b = parse_disk("path=b,id=disk0").unwrap();
        assert_eq!(
            disk_ids(std::slice::from_ref(&a)),
            Ok(vec!["disk0".to_string()])
        );
        assert_eq!(
            disk_ids(&[a, b]),
            Err(DiskOptionError::DuplicateId("disk0".into()))
        );
    }
}

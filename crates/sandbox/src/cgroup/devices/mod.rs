//! Device access control for cgroup v2, where there is no `devices.allow` file: the
//! ordered v1-style rules are folded into a [`DevicePolicy`] (a default plus exceptions),
//! compiled into a `BPF_PROG_TYPE_CGROUP_DEVICE` program ([`program`]) and attached to the
//! group's directory ([`bpf`]). The kernel runs it on every open and mknod of a device node
//! by a task of the group, also on hybrid hosts whose v1 `devices` controller is mounted.

mod bpf;
mod program;

pub use bpf::BpfError;
pub use program::{compile, Insn};

use super::resources::DeviceRule;

/// `BPF_DEVCG_DEV_*`: the device type in the program's context.
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_*`: the access asked for.
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;

/// One exception to the default: devices it matches get `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub allow: bool,
    /// `DEV_BLOCK` or `DEV_CHAR`; `None` for both.
    pub dev_type: Option<u32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_*` bits of the rule.
    pub access: u32,
}

/// What the v1 rule list means once applied in order: a default and exceptions, of which the
/// last matching one decides (a later rule overrides an earlier one, as in v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePolicy {
    pub default_allow: bool,
    pub exceptions: Vec<Exception>,
}

/// A rule that cannot be expressed (bad type letter, access letter or number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device rule {0:?} is not valid (type a/b/c, access from \"rwm\", numbers 0..2^32)")]
pub struct BadRule(pub String);

/// Makes `rules` the device policy of the cgroup v2 group at `dir`.
pub fn apply(dir: &std::path::Path, rules: &[DeviceRule]) -> Result<(), DeviceError> {
    let policy = DevicePolicy::from_rules(rules)?;
    bpf::attach(dir, &compile(&policy))?;
    Ok(())
}

/// Device rules could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Rule(#[from] BadRule),
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

impl DevicePolicy {
    /// Folds rules in order. An `a` rule resets: everything allowed (or denied) and earlier
    /// exceptions forgotten. Without any rule a cgroup allows everything, as v1 does.
    pub fn from_rules(rules: &[DeviceRule]) -> Result<Self, BadRule> {
        let mut policy = DevicePolicy {
            default_allow: true,
            exceptions: Vec::new(),
        };
        for rule in rules {
            let bad = || BadRule(rule.v1_line());
            let access = access_bits(&rule.access).ok_or_else(bad)?;
            let number = |n: Option<i64>| match n {
                None => Ok(None),
                Some(v) => u32::try_from(v).map(Some).map_err(|_| bad()),
            };
            let (major, minor) = (number(rule.major)?, number(rule.minor)?);
            let dev_type = match rule.kind {
                'a' => {
                    policy.default_allow = rule.allow;
                    policy.exceptions.clear();
                    continue;
                }
                'b' => DEV_BLOCK,
                'c' => DEV_CHAR,
                _ => return Err(bad()),
            };
            policy.exceptions.push(Exception {
                allow: rule.allow,
                dev_type: Some(dev_type),
                major,
                minor,
                access,
            });
        }
        Ok(policy)
    }

    /// Whether the policy allows `access` (`ACC_*` bits) to a device: the reference the
    /// compiled program must agree with.
    pub fn allows(&self, dev_type: u32, major: u32, minor: u32, access: u32) -> bool {
        for e in self.exceptions.iter().rev() {
            if e.matches(dev_type, major, minor, access) {
                return e.allow;
            }
        }
        self.default_allow
    }
}

impl Exception {
    /// An allow rule matches when it grants every bit asked for; a deny rule when it
    /// forbids any of them.
    pub fn matches(&self, dev_type: u32, major: u32, minor: u32, access: u32) -> bool {
        let access_hit = if self.allow {
            access & !self.access == 0
        } else {
            access & self.access != 0
        };
        self.dev_type.is_none_or(|t| t == dev_type)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && access_hit
    }
}

fn access_bits(access: &str) -> Option<u32> {
    access.chars().try_fold(0, |bits, c| {
        Some(
            bits | match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return None,
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rule(
        allow: bool,
        kind: char,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule::new(allow, kind, major, minor, access)
    }

    #[test]
    fn deny_all_then_allow_null() {
        let p = DevicePolicy::from_rules(&[
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(3), "rwm"),
        ])
        .unwrap();
        assert!(!p.default_allow);
        assert!(p.allows(DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE));
        assert!(!p.allows(DEV_CHAR, 1, 5, ACC_READ));
        assert!(!p.allows(DEV_BLOCK, 1, 3, ACC_READ));
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let p = DevicePolicy::from_rules(&[
            rule(true, 'c', Some(1), None, "rwm"),
            rule(false, 'c', Some(1), Some(1), "w"),
        ])
        .unwrap();
        assert!(p.allows(DEV_CHAR, 1, 1, ACC_READ));
        assert!(!p.allows(DEV_CHAR, 1, 1, ACC_READ | ACC_WRITE));
        assert!(p.allows(DEV_CHAR, 1, 3, ACC_WRITE));
    }

    #[test]
    fn partial_allow_does_not_grant_more() {
        let p = DevicePolicy::from_rules(&[
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(10), Some(200), "r"),
        ])
        .unwrap();
        assert!(p.allows(DEV_CHAR, 10, 200, ACC_READ));
        assert!(!p.allows(DEV_CHAR, 10, 200, ACC_READ | ACC_WRITE));
        assert!(!p.allows(DEV_CHAR, 10, 200, ACC_MKNOD));
    }

    #[test]
    fn an_a_rule_forgets_earlier_exceptions() {
        let p = DevicePolicy::from_rules(&[
            rule(true, 'c', Some(1), Some(3), "rwm"),
            rule(false, 'a', None, None, "rwm"),
        ])
        .unwrap();
        assert!(p.exceptions.is_empty());
        assert!(!p.allows(DEV_CHAR, 1, 3, ACC_READ));
    }

    #[test]
    fn bad_rules_are_named() {
        for r in [
            rule(true, 'x', None, None, "rwm"),
            rule(true, 'c', Some(-1), None, "rwm"),
            rule(true, 'c', Some(1), None, "rwx"),
        ] {
            let e = DevicePolicy::from_rules(&[r]).unwrap_err();
            assert!(e.to_string().contains("device rule"), "{e}");
        }
    }
}

//! Seccomp profiles as OCI `linux.seccomp` describes them, compiled to stacked BPF filters.
//!
//! seccompiler builds filters with one match action and one mismatch action, so a profile
//! becomes one filter per action: the allow-list (mismatch = the default action) and one
//! filter per other action (mismatch = allow). The kernel runs every stacked filter and
//! keeps the most restrictive answer, which is what the profile means as long as a syscall
//! is not listed under two different actions.

use super::{compile_with, syscall_number, SeccompError};
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;
use tracing::warn;

/// What a matching syscall gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Log,
    Trace(u32),
}

impl Action {
    /// Parses an OCI action name (`SCMP_ACT_ERRNO`, ...); `errno` is `errnoRet`.
    pub fn from_oci(name: &str, errno: Option<u32>) -> Option<Action> {
        Some(match name {
            "SCMP_ACT_ALLOW" => Action::Allow,
            "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(libc::EPERM as u32)),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
            "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
            "SCMP_ACT_TRAP" => Action::Trap,
            "SCMP_ACT_LOG" => Action::Log,
            "SCMP_ACT_TRACE" => Action::Trace(errno.unwrap_or(libc::EPERM as u32)),
            _ => return None,
        })
    }

    fn to_seccompiler(self) -> SeccompAction {
        match self {
            Action::Allow => SeccompAction::Allow,
            Action::Errno(e) => SeccompAction::Errno(e),
            Action::KillThread => SeccompAction::KillThread,
            Action::KillProcess => SeccompAction::KillProcess,
            Action::Trap => SeccompAction::Trap,
            Action::Log => SeccompAction::Log,
            Action::Trace(e) => SeccompAction::Trace(e),
        }
    }
}

/// An argument comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & value) == value_two`.
    MaskedEq,
}

impl CmpOp {
    /// Parses an OCI operator name (`SCMP_CMP_EQ`, ...).
    pub fn from_oci(name: &str) -> Option<CmpOp> {
        Some(match name {
            "SCMP_CMP_EQ" => CmpOp::Eq,
            "SCMP_CMP_NE" => CmpOp::Ne,
            "SCMP_CMP_LT" => CmpOp::Lt,
            "SCMP_CMP_LE" => CmpOp::Le,
            "SCMP_CMP_GT" => CmpOp::Gt,
            "SCMP_CMP_GE" => CmpOp::Ge,
            "SCMP_CMP_MASKED_EQ" => CmpOp::MaskedEq,
            _ => return None,
        })
    }
}

/// One argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCmp {
    pub index: u8,
    pub value: u64,
    pub value_two: u64,
    pub op: CmpOp,
}

/// Syscalls that get `action` when all `args` conditions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: Action,
    pub args: Vec<ArgCmp>,
}

/// A whole profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub default_action: Action,
    pub rules: Vec<SyscallRule>,
}

fn condition(a: &ArgCmp) -> Result<SeccompCondition, SeccompError> {
    let (op, value) = match a.op {
        CmpOp::Eq => (SeccompCmpOp::Eq, a.value),
        CmpOp::Ne => (SeccompCmpOp::Ne, a.value),
        CmpOp::Lt => (SeccompCmpOp::Lt, a.value),
        CmpOp::Le => (SeccompCmpOp::Le, a.value),
        CmpOp::Gt => (SeccompCmpOp::Gt, a.value),
        CmpOp::Ge => (SeccompCmpOp::Ge, a.value),
        CmpOp::MaskedEq => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
    };
    SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, value).map_err(SeccompError)
}

/// Per syscall: `None` = unconditional, `Some(rules)` = any of these rules.
type Group = BTreeMap<i64, Option<Vec<SeccompRule>>>;

impl Profile {
    /// Compiles to BPF programs to install in order. Syscall names this architecture does
    /// not have are skipped with a warning, as runc and crun do.
    pub fn compile(&self) -> Result<Vec<Vec<libc::sock_filter>>, SeccompError> {
        let mut groups: BTreeMap<Action, Group> = BTreeMap::new();
        for rule in &self.rules {
            if rule.action == self.default_action {
                continue;
            }
            let conds = if rule.args.is_empty() {
                None
            } else {
                let c = rule.args.iter().map(condition).collect::<Result<_, _>>()?;
                Some(SeccompRule::new(c).map_err(SeccompError)?)
            };
            let group = groups.entry(rule.action).or_default();
            for name in &rule.names {
                let Some(nr) = syscall_number(name) else {
                    warn!("seccomp profile: unknown syscall {name:?} skipped");
                    continue;
                };
                let entry = group.entry(nr).or_insert_with(|| Some(Vec::new()));
                match (&conds, entry) {
                    (None, e) => *e = None,
                    (Some(r), Some(list)) => list.push(r.clone()),
                    (Some(_), None) => {}
                }
            }
        }
        let flatten = |g: Group| -> BTreeMap<i64, Vec<SeccompRule>> {
            g.into_iter()
                .map(|(nr, r)| (nr, r.unwrap_or_default()))
                .collect()
        };
        let mut progs = Vec::new();
        if self.default_action != Action::Allow {
            let allowed = flatten(groups.remove(&Action::Allow).unwrap_or_default());
            progs.push(compile_with(
                allowed,
                self.default_action.to_seccompiler(),
                SeccompAction::Allow,
            )?);
        }
        for (action, group) in groups {
            if action == Action::Allow {
                continue;
            }
            progs.push(compile_with(
                flatten(group),
                SeccompAction::Allow,
                action.to_seccompiler(),
            )?);
        }
        Ok(progs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(names: &[&str], action: Action) -> SyscallRule {
        SyscallRule {
            names: names.iter().map(|s| s.to_string()).collect(),
            action,
            args: Vec::new(),
        }
    }

    #[test]
    fn names_resolve() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("mkdir"), Some(libc::SYS_mkdir));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn allow_list_profile_is_one_filter_per_action() {
        let p = Profile {
            default_action: Action::Errno(1),
            rules: vec![
                rule(&["read", "write", "bogus"], Action::Allow),
                rule(&["mkdir"], Action::Errno(13)),
                SyscallRule {
                    names: vec!["personality".into()],
                    action: Action::Allow,
                    args: vec![ArgCmp {
                        index: 0,
                        value: 0,
                        value_two: 0,
                        op: CmpOp::Eq,
                    }],
                },
            ],
        };
        assert_eq!(p.compile().unwrap().len(), 2);
    }

    /// Installs a profile in a forked child (raw syscalls only) and reports errno of mkdir.
    fn mkdir_errno_under(p: &Profile) -> i32 {
        let progs = p.compile().unwrap();
        let path = c"/nonexistent-dir/x";
        // SAFETY: fork; the child makes raw syscalls only and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: prctl/syscall with valid arguments; prog points into `progs`.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for f in &progs {
                    let prog = libc::sock_fprog {
                        len: f.len() as u16,
                        filter: f.as_ptr().cast_mut(),
                    };
                    libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog);
                }
                let rc = libc::syscall(libc::SYS_mkdir, path.as_ptr(), 0o700);
                let e = if rc < 0 { *libc::__errno_location() } else { 0 };
                libc::_exit(e);
            }
        }
        let mut status = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn compiled_profiles_act_in_a_real_process() {
        let deny_mkdir = Profile {
            default_action: Action::Allow,
            rules: vec![rule(
                &["mkdir", "mkdirat"],
                Action::Errno(libc::EACCES as u32),
            )],
        };
        assert_eq!(mkdir_errno_under(&deny_mkdir), libc::EACCES);
        let allow_all = Profile {
            default_action: Action::Allow,
            rules: vec![],
        };
        // ENOENT: the call went through to the kernel.
        assert_eq!(mkdir_errno_under(&allow_all), libc::ENOENT);
    }
}

//! Builds run as an unprivileged user. The agent itself must reach Docker
//! and its own keys; the build command is code that anyone who may deploy
//! to this environment can write, so it runs as `build_user` (its uid, its
//! group, no supplementary groups), in a workspace handed over to that
//! user, in a work dir where it can reach nothing else: the mirrors, the
//! spool, the proxies' control sockets and this agent's identity stay the
//! agent's alone.

use std::{
    ffi::{CStr, CString},
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// Mode of the directories a build must pass through to reach its
/// workspace (`work_dir`, `workspaces`, `workspaces/<env>`): others may
/// enter them, never list them.
const PASS_THROUGH: u32 = 0o711;

/// Mode of everything else at the top of the work dir: the agent's own.
const PRIVATE_DIR: u32 = 0o700;

/// Mode of the agent's own files at the top of the work dir.
const PRIVATE_FILE: u32 = 0o600;

/// Room for the strings of one passwd entry; entries are a few hundred
/// bytes, and a bigger buffer is tried if this is too small.
const PASSWD_BUFFER: usize = 4096;

/// The user builds run as, from the system's user database.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its home directory, the build's `HOME`.
    pub home: PathBuf,
}

/// Why a build user cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildUserError {
    /// No such user.
    #[error("build user {0:?} does not exist on this host; create it (useradd --system {0}) or set another build_user")]
    Unknown(String),
    /// It is root, which is what the build user is there to avoid.
    #[error("build user {0:?} is root (uid 0); name an unprivileged user")]
    Root(String),
    /// The lookup failed.
    #[error("cannot look up build user {name:?}: {source}")]
    Lookup {
        /// The user.
        name: String,
        /// Why.
        source: io::Error,
    },
}

impl BuildUser {
    /// Looks `name` up in the user database (NSS, as `id` does).
    pub fn lookup(name: &str) -> Result<Self, BuildUserError> {
        let unknown = || BuildUserError::Unknown(name.to_owned());
        let c_name = CString::new(name).map_err(|_| unknown())?;
        let mut size = PASSWD_BUFFER;
        loop {
            let mut buf = vec![0u8; size];
            // SAFETY: an all-zero passwd is a valid value to be filled in.
            let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call, and `buf` outlives
            // the reads of the strings it holds below.
            let rc = unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    &mut entry,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut found,
                )
            };
            if rc == libc::ERANGE && size < 1 << 20 {
                size *= 4;
                continue;
            }
            if rc != 0 {
                return Err(BuildUserError::Lookup {
                    name: name.to_owned(),
                    source: io::Error::from_raw_os_error(rc),
                });
            }
            if found.is_null() {
                return Err(unknown());
            }
            // SAFETY: getpwnam_r succeeded, so pw_dir points into `buf`.
            let home = unsafe { CStr::from_ptr(entry.pw_dir) };
            let user = Self {
                name: name.to_owned(),
                uid: entry.pw_uid,
                gid: entry.pw_gid,
                home: PathBuf::from(home.to_string_lossy().into_owned()),
            };
            if user.uid == 0 {
                return Err(BuildUserError::Root(name.to_owned()));
            }
            return Ok(user);
        }
    }
}

/// Makes `work_dir` a place where a build user reaches its workspaces of
/// `env` and nothing else: `work_dir`, `workspaces` and `workspaces/<env>`
/// may be entered but not listed; everything else at the top (mirrors,
/// spool, proxies, the agent's id) is the agent's alone. The mirrors and
/// proxies directories are made now, so they are never created open.
pub fn lock_down(work_dir: &Path, env: &str) -> io::Result<()> {
    for dir in ["mirrors", "proxies"] {
        std::fs::create_dir_all(work_dir.join(dir))?;
    }
    let workspaces = work_dir.join("workspaces");
    std::fs::create_dir_all(workspaces.join(env))?;
    for entry in std::fs::read_dir(work_dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let mode = match kind {
            _ if entry.file_name() == "workspaces" => PASS_THROUGH,
            kind if kind.is_dir() => PRIVATE_DIR,
            kind if kind.is_file() => PRIVATE_FILE,
            // Sockets and links: not followed, left as they are.
            _ => continue,
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
    }
    for dir in [
        work_dir.to_owned(),
        workspaces.clone(),
        workspaces.join(env),
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PASS_THROUGH))?;
    }
    Ok(())
}

/// Gives `dir` and everything in it to `user`. Links are changed
/// themselves, never followed, so a link in the checkout cannot hand
/// over what it points at. Blocking.
pub fn hand_over(dir: &Path, user: &BuildUser) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))?;
    if !std::fs::symlink_metadata(dir)?.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        hand_over(&entry?.path(), user)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_and_root_is_refused() {
        let nobody = BuildUser::lookup("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        assert!(matches!(
            BuildUser::lookup("root"),
            Err(BuildUserError::Root(_))
        ));
        let missing = BuildUser::lookup("no-such-user-4711").unwrap_err();
        assert!(missing.to_string().contains("useradd"), "{missing}");
    }

    #[test]
    fn a_link_in_the_workspace_hands_over_itself_not_its_target() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "the agent's").unwrap();
        let workspace = dir.path().join("ws");
        std::fs::create_dir_all(workspace.join("src")).unwrap();
        std::fs::write(workspace.join("src/Main.java"), "class Main {}").unwrap();
        std::os::unix::fs::symlink(&outside, workspace.join("link")).unwrap();
        let nobody = BuildUser::lookup("nobody").unwrap();
        hand_over(&workspace, &nobody).unwrap();
        let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(owner(&workspace.join("src/Main.java")), nobody.uid);
        assert_eq!(owner(&workspace.join("link")), nobody.uid);
        assert_eq!(owner(&outside), 0, "the link's target stays the agent's");
    }
}

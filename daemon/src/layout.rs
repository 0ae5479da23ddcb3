//! Where things live under the state directory.
//!
//! ```text
//! state_dir/                      0700
//! ├── users/<uid>/                0700, one vault per local user (user mode: only the daemon's own uid)
//! │   └── db/                     the sled store (document chunks, metadata), and in it:
//! │       ├── keyring.sealed      the vault keyring, sealed by the keystore
//! │       └── device.sealed       user mode: this device's libp2p identity, sealed by the keystore
//! └── machine/                    system mode: the machine identity every user's vault is this device's under
//!     ├── device.sealed
//!     └── lock                    flock held by the running daemon and by `passmesh keystore … --system`
//! ```

use std::path::{Path, PathBuf};

/// The sled database's directory name inside a user's vault directory.
pub const DB: &str = "db";

/// The place of a user's vault under the state directory.
pub fn user_dir(state_dir: &Path, uid: u32) -> PathBuf {
    state_dir.join("users").join(uid.to_string())
}

/// The directory of system mode's machine identity and lock (not created).
pub fn machine_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("machine")
}

/// Creates `dir` and missing parents with mode 0700 and makes `dir` itself 0700: it holds a vault and, with
/// the software keystore, its keys.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

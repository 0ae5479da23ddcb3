//! The vault-framed sync message on `/passmesh/sync/2`: the 16-byte id of the vault it belongs to, then the
//! crdt sync message. The id is the routing key: one host carries every local user's vault (system mode).

use passmesh_crdt::VaultId;

/// Bytes of the vault id in front of every sync message.
pub const VAULT_ID_LEN: usize = 16;

/// `message` framed for `vault`.
pub fn frame(vault: &VaultId, message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(VAULT_ID_LEN + message.len());
    framed.extend_from_slice(vault.as_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The vault id a framed message names, or `None` if it is too short to be a frame.
pub fn vault_of(framed: &[u8]) -> Option<VaultId> {
    let (id, _) = framed.split_first_chunk::<VAULT_ID_LEN>()?;
    Some(VaultId::from_bytes(*id))
}

/// Strips the frame (in place, no copy of the allocation); call after [`vault_of`] accepted it.
pub fn unframe(mut framed: Vec<u8>) -> Vec<u8> {
    framed.drain(..VAULT_ID_LEN.min(framed.len()));
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_short_input_is_no_frame() {
        let vault = VaultId::from_bytes([7; 16]);
        let framed = frame(&vault, b"sync");
        assert_eq!(vault_of(&framed), Some(vault));
        assert_eq!(unframe(framed), b"sync");
        assert_eq!(vault_of(&[7; 15]), None);
        assert_eq!(vault_of(&[7; 16]), Some(vault));
        assert_eq!(unframe(vec![7; 16]), Vec::<u8>::new());
    }
}

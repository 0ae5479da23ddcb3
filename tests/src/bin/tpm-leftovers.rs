//! `tpm-leftovers TCTI SESSIONS`: starts SESSIONS policy sessions on the TPM and exits without flushing them,
//! as a client killed in the middle of an unseal leaves a TPM that has no resource manager. Test helper.

use anyhow::Context as _;
use tss_esapi::Context;
use tss_esapi::constants::SessionType;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::SymmetricDefinition;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tcti = args.next().context("usage: tpm-leftovers TCTI SESSIONS")?;
    let sessions: usize = args
        .next()
        .context("usage: tpm-leftovers TCTI SESSIONS")?
        .parse()
        .context("SESSIONS must be a number")?;
    let mut context = Context::new(tcti.parse().context("invalid TCTI")?)?;
    for _ in 0..sessions {
        context.start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )?;
    }
    // Exit without dropping the context: dropping it would flush the sessions.
    std::process::exit(0)
}

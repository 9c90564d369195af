//! Does this kernel let a program be put in a dispatcher's slot? The same
//! check libxdp makes before it builds a dispatcher
//! (`libxdp_check_kern_compat`): load the dispatcher object's `xdp_pass` as
//! an XDP program, load `xdp_pass` again as an extension (freplace) of it,
//! and attach the extension. When the kernel refuses, libxdp falls back to
//! attaching a single program without a dispatcher, and so `xdp-loader
//! status` shows no dispatcher: sipguard must then attach exclusively too.
use super::object;
use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{Extension, ProgramError, Xdp},
    EbpfLoader,
};

/// The program of the dispatcher object both halves of the check use.
const PROGRAM: &str = "xdp_pass";

/// The kernel's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freplace {
    /// An extension loads and attaches: dispatchers work here.
    Allowed,
    /// The kernel refused the extension (with its error): no program can be
    /// put in a dispatcher's slot on this kernel, by libxdp or sipguard.
    Refused(String),
}

/// Runs the check with libxdp's installed dispatcher object. An error means
/// the check could not run (no object, or the plain XDP half failed), not
/// that the kernel refused.
pub fn probe() -> Result<Freplace> {
    let path = object::find()?;
    let bytes = object::read(&path)?;
    probe_with(&bytes).with_context(|| format!("probing freplace with {}", path.display()))
}

fn probe_with(bytes: &[u8]) -> Result<Freplace> {
    let mut target = EbpfLoader::new()
        .load(bytes)
        .context("cannot parse the dispatcher object")?;
    let target_fd = {
        let xdp: &mut Xdp = target
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("{PROGRAM} missing from the dispatcher object"))?
            .try_into()?;
        xdp.load()
            .context("the kernel refused the dispatcher's plain XDP program")?;
        xdp.fd()?.try_clone()?
    };
    let mut ext = EbpfLoader::new()
        .extension(PROGRAM)
        .load(bytes)
        .context("cannot parse the dispatcher object")?;
    let program: &mut Extension = ext
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("{PROGRAM} missing from the dispatcher object"))?
        .try_into()?;
    if let Err(e) = program.load(target_fd, PROGRAM) {
        return Ok(Freplace::Refused(format!(
            "loading an extension: {}",
            kernel_error(&e)
        )));
    }
    match program.attach() {
        // Dropping `ext` and `target` detaches and unloads both.
        Ok(_) => Ok(Freplace::Allowed),
        Err(e) => Ok(Freplace::Refused(format!(
            "attaching an extension: {}",
            kernel_error(&e)
        ))),
    }
}

/// The kernel's error, with the verifier's log only when it has one (a
/// refusal before verification, as by a policy, leaves it empty).
fn kernel_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let log = log.trim();
            if log.is_empty() {
                format!("BPF_PROG_LOAD: {io_error}, before the verifier ran")
            } else {
                // The log's last line says why; the rest is the walk.
                let last = log.lines().last().unwrap_or_default();
                format!("BPF_PROG_LOAD: {io_error}; verifier: {last}")
            }
        }
        other => other.to_string(),
    }
}

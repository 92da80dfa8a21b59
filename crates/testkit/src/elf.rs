//! Just enough of an ELF header to tell whether an executable needs a dynamic loader: the
//! test service must not (it runs in a `FROM scratch` image), nor may the Pi's installer
//! (`cargo xtask armv7`).

use std::path::Path;

/// `e_machine` of 32-bit ARM.
pub const EM_ARM: u16 = 40;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// Program header type of the program interpreter (the dynamic loader).
const PT_INTERP: u32 = 3;

/// What the header of a little-endian ELF file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elf {
    /// 32 or 64.
    pub bits: u8,
    /// `e_machine` (e.g. [`EM_ARM`], [`EM_X86_64`]).
    pub machine: u16,
    /// True when a `PT_INTERP` program header names a dynamic loader.
    pub interpreter: bool,
    /// The file's size in bytes.
    pub size: u64,
}

/// Reads the ELF header and program headers of `path`. An error says what is wrong: not a
/// little-endian ELF file, or a truncated header.
pub fn read_elf(path: &Path) -> Result<Elf, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let u16_at = |off: usize| {
        bytes
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        bytes
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| {
        bytes.get(off..off + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let bits = match (bytes.starts_with(b"\x7fELF"), bytes.get(4), bytes.get(5)) {
        (true, Some(1), Some(1)) => 32,
        (true, Some(2), Some(1)) => 64,
        _ => {
            return Err(format!(
                "{} is not a little-endian ELF file",
                path.display()
            ));
        }
    };
    let truncated = || format!("{}: truncated ELF header", path.display());
    let machine = u16_at(0x12).ok_or_else(truncated)?;
    let (phoff, phentsize, phnum) = if bits == 64 {
        (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    } else {
        (u32_at(0x1c).map(u64::from), u16_at(0x2a), u16_at(0x2c))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err(truncated());
    };
    let mut interpreter = false;
    for i in 0..usize::from(phnum) {
        let p_type = usize::try_from(phoff)
            .ok()
            .and_then(|start| start.checked_add(i * usize::from(phentsize)))
            .and_then(u32_at)
            .ok_or_else(|| format!("{}: truncated program headers", path.display()))?;
        interpreter |= p_type == PT_INTERP;
    }
    Ok(Elf {
        bits,
        machine,
        interpreter,
        size: bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_test_binary_and_refuses_other_files() {
        let exe = std::env::current_exe().expect("current exe");
        let elf = read_elf(&exe).expect("the test binary is ELF");
        assert_eq!(elf.bits, 64);
        assert_eq!(elf.machine, EM_X86_64);
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("text");
        std::fs::write(&text, "#!/bin/sh\n").expect("write");
        assert!(
            read_elf(&text)
                .unwrap_err()
                .contains("not a little-endian ELF")
        );
        let short = dir.path().join("short");
        std::fs::write(&short, b"\x7fELF\x02\x01\x01").expect("write");
        assert!(
            read_elf(&short)
                .unwrap_err()
                .contains("truncated ELF header")
        );
    }
}

//! ELF headers, to tell which machine a binary read back from an image was built for.

/// The ELF `e_machine` of `platform`'s binaries.
pub fn machine_of_platform(platform: &str) -> u16 {
    match platform {
        "linux/amd64" => 62,    // EM_X86_64
        "linux/arm64" => 183,   // EM_AARCH64
        "linux/ppc64le" => 21,  // EM_PPC64
        "linux/s390x" => 22,    // EM_S390
        "linux/arm/v7" => 40,   // EM_ARM
        "linux/riscv64" => 243, // EM_RISCV
        other => panic!("no ELF machine known for {other}"),
    }
}

/// The `e_machine` of an ELF file's bytes, read in the file's own byte order; None when the bytes
/// are not ELF.
pub fn machine(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let field = [bytes[18], bytes[19]];
    // EI_DATA: 1 little-endian, 2 big-endian (s390x).
    match bytes[5] {
        1 => Some(u16::from_le_bytes(field)),
        2 => Some(u16::from_be_bytes(field)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_byte_orders() {
        let mut little = b"\x7fELF\x02\x01\x01".to_vec();
        little.resize(64, 0);
        little[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(machine(&little), Some(machine_of_platform("linux/arm64")));
        let mut big = little.clone();
        big[5] = 2;
        big[18..20].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(machine(&big), Some(machine_of_platform("linux/s390x")));
        assert_eq!(machine(b"#!/bin/sh\necho not elf\n"), None);
        assert_eq!(machine(&little[..10]), None);
    }

    #[test]
    fn this_test_binary_is_for_this_machine() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let platform = match std::env::consts::ARCH {
            "x86_64" => "linux/amd64",
            "aarch64" => "linux/arm64",
            "powerpc64" => "linux/ppc64le",
            "s390x" => "linux/s390x",
            _ => return,
        };
        assert_eq!(machine(&exe), Some(machine_of_platform(platform)));
    }
}

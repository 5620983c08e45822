//! ELF headers: which machine an executable or shared object is for, and whether a platform's
//! machines run it.

use std::fmt;

use archfarm_protocol::Platform;

/// How many bytes of a file the check reads: an ELF header is 52 (32-bit) or 64 bytes, and the
/// fields judged all lie in its first 20.
pub const HEADER_BYTES: usize = 64;

/// `e_machine` values (from the System V ABI's registry) the check names.
mod em {
    pub const I386: u16 = 3;
    pub const MIPS: u16 = 8;
    pub const PPC: u16 = 20;
    pub const PPC64: u16 = 21;
    pub const S390: u16 = 22;
    pub const ARM: u16 = 40;
    pub const SPARCV9: u16 = 43;
    pub const IA_64: u16 = 50;
    pub const X86_64: u16 = 62;
    pub const AARCH64: u16 = 183;
    pub const RISCV: u16 = 243;
    pub const LOONGARCH: u16 = 258;
}

/// `EI_CLASS`: the word size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `ELFCLASS32`.
    Elf32,
    /// `ELFCLASS64`.
    Elf64,
}

/// `EI_DATA`: the byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// `ELFDATA2LSB`.
    Little,
    /// `ELFDATA2MSB`.
    Big,
}

/// The kinds of ELF file that are judged: the ones a machine loads to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ET_EXEC`: a program linked at a fixed address.
    Executable,
    /// `ET_DYN`: a shared library or a position-independent program.
    SharedObject,
}

/// What an ELF header says about the machine a file runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elf {
    /// Word size.
    pub class: Class,
    /// Byte order.
    pub order: Order,
    /// Executable or shared object.
    pub kind: Kind,
    /// `e_machine`.
    pub machine: u16,
}

/// Reads the header at the start of a file. `None` for anything that is not an executable or
/// shared object: not ELF, too short, relocatable objects (`.o`, kernel modules) and core dumps,
/// which no loader runs as they are.
pub fn read(head: &[u8]) -> Option<Elf> {
    if head.len() < 20 || head[..4] != *b"\x7fELF" {
        return None;
    }
    let class = match head[4] {
        1 => Class::Elf32,
        2 => Class::Elf64,
        _ => return None,
    };
    let order = match head[5] {
        1 => Order::Little,
        2 => Order::Big,
        _ => return None,
    };
    let field = |at: usize| {
        let b = [head[at], head[at + 1]];
        match order {
            Order::Little => u16::from_le_bytes(b),
            Order::Big => u16::from_be_bytes(b),
        }
    };
    let kind = match field(16) {
        2 => Kind::Executable,
        3 => Kind::SharedObject,
        _ => return None,
    };
    Some(Elf {
        class,
        order,
        kind,
        machine: field(18),
    })
}

/// What each platform's machines run: `(e_machine, class, order)`.
type Native = (u16, Class, Order);

/// The machines a platform's binaries may be for; `None` when the platform is not judged.
///
/// linux/amd64 also runs i386 code: every x86-64 processor does, natively, and multilib packages
/// (gcc-multilib, lib32 libraries, wine) put such files in amd64 images as a matter of course.
/// No other pair is taken as compatible: arm64 processors without AArch32 (Graviton 3 and
/// later, Apple's) cannot run arm/v7 code, so an arm64 image must not rely on it.
pub fn natives(platform: &Platform) -> Option<&'static [Native]> {
    use Class::*;
    use Order::*;
    if platform.os() != "linux" {
        return None;
    }
    Some(match platform.architecture() {
        "amd64" => &[(em::X86_64, Elf64, Little), (em::I386, Elf32, Little)],
        "386" => &[(em::I386, Elf32, Little)],
        "arm64" => &[(em::AARCH64, Elf64, Little)],
        "arm" => &[(em::ARM, Elf32, Little)],
        "ppc64le" => &[(em::PPC64, Elf64, Little)],
        "s390x" => &[(em::S390, Elf64, Big)],
        "riscv64" => &[(em::RISCV, Elf64, Little)],
        _ => return None,
    })
}

impl Elf {
    /// Whether a machine of one of `natives` runs it.
    pub fn runs_on(&self, natives: &[Native]) -> bool {
        natives.contains(&(self.machine, self.class, self.order))
    }

    /// The architecture as people name it, e.g. `x86-64`, `AArch64`, `S/390 64-bit`; a word size
    /// or byte order unusual for the machine is added.
    pub fn architecture(&self) -> String {
        use Class::*;
        use Order::*;
        let (name, usual): (&str, Option<(Class, Order)>) = match self.machine {
            em::X86_64 => ("x86-64", Some((Elf64, Little))),
            em::I386 => ("i386", Some((Elf32, Little))),
            em::AARCH64 => ("AArch64", Some((Elf64, Little))),
            em::ARM => ("ARM", Some((Elf32, Little))),
            em::PPC64 if self.order == Little => ("PowerPC64 little-endian", Some((Elf64, Little))),
            em::PPC64 => ("PowerPC64 big-endian", Some((Elf64, Big))),
            em::PPC => ("PowerPC", Some((Elf32, Big))),
            em::S390 if self.class == Elf64 => ("S/390 64-bit", Some((Elf64, Big))),
            em::S390 => ("S/390 31-bit", Some((Elf32, Big))),
            em::RISCV if self.class == Elf64 => ("RISC-V 64-bit", Some((Elf64, Little))),
            em::RISCV => ("RISC-V 32-bit", Some((Elf32, Little))),
            em::MIPS => ("MIPS", None),
            em::SPARCV9 => ("SPARC V9", Some((Elf64, Big))),
            em::IA_64 => ("IA-64", Some((Elf64, Little))),
            em::LOONGARCH => ("LoongArch", None),
            other => return format!("ELF machine {other} ({}, {})", self.class, self.order),
        };
        match usual {
            Some((class, _)) if class != self.class => format!("{name} ({})", self.class),
            Some((_, order)) if order != self.order => format!("{name} ({})", self.order),
            None => format!("{name} ({}, {})", self.class, self.order),
            _ => name.to_string(),
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Elf32 => "32-bit",
            Class::Elf64 => "64-bit",
        })
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::Little => "little-endian",
            Order::Big => "big-endian",
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Executable => "executable",
            Kind::SharedObject => "shared object",
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 64-byte ELF header for `machine`, with `class` (1 or 2), `data` (1 or 2) and `e_type`.
    pub fn header(class: u8, data: u8, e_type: u16, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_BYTES];
        h[..4].copy_from_slice(b"\x7fELF");
        (h[4], h[5], h[6]) = (class, data, 1);
        let (t, m) = if data == 2 {
            (e_type.to_be_bytes(), machine.to_be_bytes())
        } else {
            (e_type.to_le_bytes(), machine.to_le_bytes())
        };
        h[16..18].copy_from_slice(&t);
        h[18..20].copy_from_slice(&m);
        h
    }

    fn platform(p: &str) -> Platform {
        Platform::parse(p).unwrap()
    }

    #[test]
    fn each_platform_runs_its_own_machine_and_no_other() {
        let files = [
            ("linux/amd64", header(2, 1, 2, 62), "x86-64"),
            ("linux/386", header(1, 1, 3, 3), "i386"),
            ("linux/arm64", header(2, 1, 3, 183), "AArch64"),
            ("linux/arm/v7", header(1, 1, 2, 40), "ARM"),
            (
                "linux/ppc64le",
                header(2, 1, 3, 21),
                "PowerPC64 little-endian",
            ),
            ("linux/s390x", header(2, 2, 2, 22), "S/390 64-bit"),
            ("linux/riscv64", header(2, 1, 3, 243), "RISC-V 64-bit"),
        ];
        for (p, own, name) in &files {
            let elf = read(own).unwrap();
            assert_eq!(elf.architecture(), *name);
            let natives = natives(&platform(p)).unwrap();
            assert!(elf.runs_on(natives), "{p} runs {name}");
            for (other, file, other_name) in &files {
                let runs = read(file).unwrap().runs_on(natives);
                // The one pair taken as compatible: i386 code on amd64.
                let compatible = other == p || (*p == "linux/amd64" && *other == "linux/386");
                assert_eq!(runs, compatible, "{p} runs {other_name} ({other})");
            }
        }
        let v6 = natives(&platform("linux/arm/v6")).unwrap();
        assert!(read(&files[3].1).unwrap().runs_on(v6));
    }

    #[test]
    fn word_size_and_byte_order_count_too() {
        let arm64 = natives(&platform("linux/arm64")).unwrap();
        // AArch64 ILP32 and big-endian AArch64 do not run on linux/arm64.
        let ilp32 = read(&header(1, 1, 2, 183)).unwrap();
        assert!(!ilp32.runs_on(arm64));
        assert_eq!(ilp32.architecture(), "AArch64 (32-bit)");
        let be = read(&header(2, 2, 2, 183)).unwrap();
        assert!(!be.runs_on(arm64));
        assert_eq!(be.architecture(), "AArch64 (big-endian)");
        let ppc64 = read(&header(2, 2, 2, 21)).unwrap();
        assert!(!ppc64.runs_on(natives(&platform("linux/ppc64le")).unwrap()));
        assert_eq!(ppc64.architecture(), "PowerPC64 big-endian");
        let x32 = read(&header(1, 1, 2, 62)).unwrap();
        assert!(!x32.runs_on(natives(&platform("linux/amd64")).unwrap()));
        assert_eq!(
            read(&header(2, 1, 2, 9999)).unwrap().architecture(),
            "ELF machine 9999 (64-bit, little-endian)"
        );
    }

    #[test]
    fn only_executables_and_shared_objects_are_judged() {
        assert_eq!(read(&header(2, 1, 2, 62)).unwrap().kind, Kind::Executable);
        assert_eq!(read(&header(2, 1, 3, 62)).unwrap().kind, Kind::SharedObject);
        // Relocatable objects (.o, .ko) and core dumps are not.
        assert_eq!(read(&header(2, 1, 1, 62)), None);
        assert_eq!(read(&header(2, 1, 4, 62)), None);
        // Scripts, data, short files, bad class or byte order.
        assert_eq!(read(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(read(&header(2, 1, 2, 62)[..19]), None);
        assert_eq!(read(&header(3, 1, 2, 62)), None);
        assert_eq!(read(&header(2, 0, 2, 62)), None);
        assert_eq!(read(b""), None);
    }

    #[test]
    fn this_agent_is_for_this_machine() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let elf = read(&exe[..HEADER_BYTES]).unwrap();
        let here = Platform::from_machine(std::env::consts::ARCH).unwrap();
        assert!(elf.runs_on(natives(&here).unwrap()));
    }
}
